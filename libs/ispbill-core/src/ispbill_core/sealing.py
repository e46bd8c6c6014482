"""Secrets sealed at rest: what must not be readable in the ledger, on a topic or in a backup.

The ledger is append-only and is replayed by auditors, exported and backed up; a secret written
into it in plain text can never be taken back out. So secrets (a NAS's RADIUS shared secret)
are recorded sealed, and only the processes that need them hold the key (docs/adr/0012).

Sealing is AES-SIV (RFC 5297, AES-256: a 64-byte key) with a *context* as associated data, the
thing the secret belongs to ("nas:<id>"): a sealed value copied onto another NAS does not open.
AES-SIV is deterministic, on purpose: the same secret for the same context under the same key
seals to the same text, so a repeated command records the same event and stays idempotent. The
only thing that reveals is that a context's secret did not change.

A sealed value reads ``sealed:v1:<key id>:<base64url>``. The key id (the first 8 hex digits of
the key's SHA-256) says which key of the keyring opens it, so keys can be rotated: a new key is
put first (it seals from then on) and the old ones stay after it for as long as values sealed
with them are still read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from ispbill_core.files import private_parents

PREFIX = "sealed:v1:"
KEY_BYTES = 64
#: The keys, base64, the first one sealing; several are separated by commas.
KEY_ENV = "ISPBILL_SECRETS_KEY"
#: A file of keys, one per line (base64, the first one sealing; "#" starts a comment).
KEY_FILE_ENV = "ISPBILL_SECRETS_KEY_FILE"


class SealingError(Exception):
    """A key that is not one, a keyring that cannot be found, or a value that does not open."""


def new_key() -> str:
    """A fresh random key, base64, for ISPBILL_SECRETS_KEY or a key file."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


def sealed_with(sealed: str) -> str:
    """The id of the key a sealed value was sealed with (not secret)."""
    if not is_sealed(sealed):
        raise SealingError(f"not a sealed value (it should start with {PREFIX!r})")
    return sealed[len(PREFIX) :].partition(":")[0]


class Keyring:
    """The keys that open sealed values; the first one also seals."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise SealingError("a keyring needs at least one key")
        for key in keys:
            if len(key) != KEY_BYTES:
                raise SealingError(
                    f"a secrets key is {KEY_BYTES} random bytes in base64, not {len(key)} bytes"
                    " (make one with `ispbill secrets new-key`)"
                )
        self._sealing = AESSIV(keys[0])
        self._sealing_id = key_id(keys[0])
        self._by_id = {key_id(key): AESSIV(key) for key in keys}

    @property
    def sealing_key_id(self) -> str:
        return self._sealing_id

    @property
    def key_ids(self) -> list[str]:
        return list(self._by_id)

    # -- building one ----------------------------------------------------------------------
    @classmethod
    def from_text(cls, text: str, *, source: str = "the keyring") -> Keyring:
        """Base64 keys separated by commas, spaces or lines; "#" starts a comment."""
        keys: list[bytes] = []
        for line in text.splitlines():
            line = line.split("#", 1)[0]
            for item in line.replace(",", " ").split():
                try:
                    keys.append(base64.b64decode(item, validate=True))
                except binascii.Error:
                    raise SealingError(f"{source}: a key is not valid base64") from None
        if not keys:
            raise SealingError(f"{source} holds no key")
        try:
            return cls(keys)
        except SealingError as exc:
            raise SealingError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: Path) -> Keyring:
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            raise SealingError(f"secrets key file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SealingError(f"secrets key file {path} cannot be read: {exc}") from None
        return cls.from_text(text, source=str(path))

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        default_file: Path | None = None,
        create_default: bool = False,
    ) -> Keyring:
        """ISPBILL_SECRETS_KEY, else ISPBILL_SECRETS_KEY_FILE, else `default_file` (made, with a
        new key and mode 0600, when `create_default` and it does not exist yet)."""
        environ = os.environ if environ is None else environ
        if environ.get(KEY_ENV):
            return cls.from_text(environ[KEY_ENV], source=KEY_ENV)
        if environ.get(KEY_FILE_ENV):
            return cls.from_file(Path(environ[KEY_FILE_ENV]))
        if default_file is None:
            raise SealingError(
                f"no secrets key: set {KEY_ENV} (or {KEY_FILE_ENV}); the NAS secrets in the"
                " ledger are sealed with it (`ispbill secrets new-key` makes one)"
            )
        if not default_file.exists():
            if not create_default:
                raise SealingError(
                    f"no secrets key: {KEY_ENV} and {KEY_FILE_ENV} are not set and"
                    f" {default_file} does not exist (the NAS secrets in the ledger are sealed"
                    " with it; `ispbill run` makes it in its data directory)"
                )
            write_new_key_file(default_file)
        return cls.from_file(default_file)

    # -- use -------------------------------------------------------------------------------
    def seal(self, plaintext: bytes, context: str) -> str:
        sealed = self._sealing.encrypt(plaintext, [context.encode("utf-8")])
        encoded = base64.urlsafe_b64encode(sealed).decode("ascii").rstrip("=")
        return f"{PREFIX}{self._sealing_id}:{encoded}"

    def open(self, sealed: str, context: str) -> bytes:
        if not is_sealed(sealed):
            raise SealingError(f"not a sealed value (it should start with {PREFIX!r})")
        kid, sep, encoded = sealed[len(PREFIX) :].partition(":")
        if not sep:
            raise SealingError("a sealed value is missing its key id")
        cipher = self._by_id.get(kid)
        if cipher is None:
            raise SealingError(
                f"sealed with key {kid}, which is not in the keyring (keys: "
                f"{', '.join(self._by_id)}); put that key back after the sealing one"
            )
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            return cipher.decrypt(raw, [context.encode("utf-8")])
        except (binascii.Error, ValueError, InvalidTag):
            raise SealingError(
                f"the value sealed with key {kid} does not open for {context!r}:"
                " altered, or sealed for something else"
            ) from None


def write_new_key_file(path: Path) -> bool:
    """A key file with one new key, readable by its owner only. Never overwrites one: when two
    processes race to make it, one key wins and both use it. True when this call made it."""
    private_parents(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write("# ispbill secrets key: it opens the NAS secrets sealed in the ledger.\n")
            f.write("# Back it up apart from the ledger; without it no NAS secret can be read.\n")
            f.write(new_key() + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails rather than replace an existing key
        except FileExistsError:
            return False
        except OSError as exc:  # a file system without hard links, say
            raise SealingError(
                f"cannot make the secrets key file {path}: {exc}; set {KEY_ENV} or write the"
                " file yourself (`ispbill secrets new-key`, mode 0600)"
            ) from None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True
    finally:
        tmp.unlink(missing_ok=True)
