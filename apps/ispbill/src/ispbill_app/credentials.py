"""The CLI's API tokens: one per server, kept where only their owner can read them.

ISPBILL_TOKEN, when set, is the token for whatever server is used. Otherwise `ispbill login`
stores tokens in $ISPBILL_CONFIG_DIR/credentials.json (default ~/.config/ispbill/), a JSON
object keyed by server base URL: {"<url>": {"token", "username", "expires_at"}}; the file is
0600 and its directory 0700 whatever the umask, and it is replaced atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TOKEN_ENV = "ISPBILL_TOKEN"  # noqa: S105 - the name of a variable, not a token
CONFIG_DIR_ENV = "ISPBILL_CONFIG_DIR"
FILE_NAME = "credentials.json"


def config_dir() -> Path:
    given = os.environ.get(CONFIG_DIR_ENV)
    return Path(given) if given else Path.home() / ".config" / "ispbill"


def credentials_path() -> Path:
    return config_dir() / FILE_NAME


def load() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(credentials_path().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"cannot read {credentials_path()}: {exc}") from None
    return data if isinstance(data, dict) else {}


class CredentialsError(Exception):
    pass


def _write(entries: dict[str, dict[str, Any]]) -> Path:
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask, and may exist already
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".credentials-", suffix=".json")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, directory / FILE_NAME)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return directory / FILE_NAME


def store(server: str, token: str, username: str, expires_at: str) -> Path:
    entries = load()
    entries[server] = {"token": token, "username": username, "expires_at": expires_at}
    return _write(entries)


def forget(server: str) -> bool:
    entries = load()
    if entries.pop(server, None) is None:
        return False
    _write(entries)
    return True


def token_for(server: str, now: datetime | None = None) -> str | None:
    """ISPBILL_TOKEN if set; else the stored token for `server` unless it has expired."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    try:
        entry = load().get(server)
    except CredentialsError:
        return None
    if not isinstance(entry, dict) or not entry.get("token"):
        return None
    try:
        expires = datetime.fromisoformat(str(entry.get("expires_at")).replace("Z", "+00:00"))
    except ValueError:
        return str(entry["token"])
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return str(entry["token"]) if expires > (now or datetime.now(UTC)) else None
