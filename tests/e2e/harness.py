"""Drives a running ispbill from the outside: processes, the CLI, radclient, and polling."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.fixtures.smtp import free_port

T = TypeVar("T")
ISPBILL = [sys.executable, "-m", "ispbill_app.cli"]
GB = 10**9
#: The staff user the e2e tests log in as: the demo admin (`run --with-demo` with DEMO_ENV),
#: or made with `ispbill staff create-admin` (create_admin).
E2E_ADMIN = "admin"
E2E_ADMIN_PASSWORD = "e2e-admin-password"
DEMO_ENV = {"ISPBILL_DEMO_ADMIN_PASSWORD": E2E_ADMIN_PASSWORD}


def log_in(server: str, username: str = E2E_ADMIN, password: str = E2E_ADMIN_PASSWORD) -> str:
    """A token from POST /api/v1/auth/token (raises for a refusal)."""
    response = httpx.post(
        f"{server}/api/v1/auth/token",
        json={"username": username, "password": password, "name": "e2e"},
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["token"])


def create_admin(runtime_args: list[str], env: dict[str, str], tmp: Path) -> None:
    """`ispbill staff create-admin` on a ledger (the flags or environment of `run`/`serve`)."""
    password_file = tmp / "e2e-admin-password"
    password_file.write_text(E2E_ADMIN_PASSWORD + "\n")
    result = subprocess.run(
        [
            *ISPBILL,
            "staff",
            "create-admin",
            "--username",
            E2E_ADMIN,
            "--password-file",
            str(password_file),
            *runtime_args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    if result.returncode != 0:
        raise AssertionError(f"create-admin failed: {result.stderr}{result.stdout}")


def wait_until(probe: Callable[[], T | None], *, timeout: float = 30.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (httpx.HTTPError, OSError, AssertionError) as exc:
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or probe}: {last_error}")


#: Server processes whose stacks are dumped when a call into them is slow (see run_watched).
WATCHED_PIDS: list[int] = []
SLOW_CALL_SECONDS = 10.0


def dump_stacks(pid: int) -> str:
    """py-spy's view of every thread of a process, native frames included: the evidence when
    a request hangs (an idle server and a stuck one look the same from outside)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    try:
        out = subprocess.run(
            [exe, "dump", "--pid", str(pid), "--locals"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"py-spy dump of {pid} failed: {exc!r}"
    return out.stdout + out.stderr


def run_watched(
    args: list[str],
    *,
    input: str | None = None,
    timeout: float,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """subprocess.run, but when the call takes longer than SLOW_CALL_SECONDS, the stacks of the
    watched servers are printed (pytest shows them if the test then fails)."""
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE if input is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )
    try:
        out, err = proc.communicate(input, timeout=SLOW_CALL_SECONDS)
    except subprocess.TimeoutExpired:
        started = time.monotonic()
        for pid in WATCHED_PIDS:
            print(f"--- slow call {args[-4:]}: stacks of pid {pid} ---\n{dump_stacks(pid)}")
        try:
            out, err = proc.communicate(
                timeout=max(1.0, timeout - SLOW_CALL_SECONDS - (time.monotonic() - started))
            )
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"{args} timed out after {timeout} s: {out}{err}") from None
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


class Process:
    """A child process whose output goes to a log file we can show when a test fails."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
        WATCHED_PIDS.append(self.proc.pid)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}"
            )

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.pid in WATCHED_PIDS:
            WATCHED_PIDS.remove(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Ispbill:
    """The CLI and REST API of one running ispbill, as the e2e admin: it logs in on first use
    (at `auth`'s server when given: a collector shares the API's ledger, and so its tokens)."""

    def __init__(self, http_port: int, *, auth: Ispbill | None = None) -> None:
        self.server = f"http://127.0.0.1:{http_port}"
        self._auth = auth
        self._token: str | None = None

    @property
    def token(self) -> str:
        if self._auth is not None:
            return self._auth.token
        if self._token is None:
            self._token = log_in(self.server)
        return self._token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def cli(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = run_watched(
            [*ISPBILL, "--server", self.server, *args],
            input=input,
            timeout=120,
            env={"ISPBILL_TOKEN": self.token},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"ispbill {' '.join(args)} failed: {result.stderr}{result.stdout}")
        return result

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--format", "json").stdout)

    def get(self, path: str) -> Any:
        response = httpx.get(self.server + path, timeout=10, headers=self.headers())
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = httpx.post(self.server + path, json=body, timeout=10, headers=self.headers())
        response.raise_for_status()
        return response.json()

    def put(self, path: str, body: dict[str, Any]) -> Any:
        response = httpx.put(self.server + path, json=body, timeout=10, headers=self.headers())
        response.raise_for_status()
        return response.json()

    def healthy(self) -> bool:
        try:
            return httpx.get(self.server + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def radclient(port: int, secret: str, packets: list[dict[str, str | int]]) -> str:
    """Send accounting packets with FreeRADIUS's radclient, one after another, and wait for
    each Accounting-Response (radclient exits non-zero when one never comes)."""
    exe = shutil.which("radclient")
    if exe is None:
        raise AssertionError("radclient not installed (apt-get install freeradius-utils)")
    text = "\n\n".join(",".join(f"{k}={v}" for k, v in p.items()) for p in packets) + "\n"
    result = run_watched(
        [exe, "-x", "-r", "3", "-t", "3", f"127.0.0.1:{port}", "acct", secret],
        input=text,
        timeout=60,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"radclient failed ({result.returncode}): {result.stdout}{result.stderr}"
        )
    return result.stdout


def octets(value: int, direction: str) -> dict[str, int]:
    """RADIUS carries 64-bit counters as Gigawords (high 32 bits) plus Octets (low 32 bits)."""
    return {
        f"Acct-{direction}-Octets": value % 2**32,
        f"Acct-{direction}-Gigawords": value // 2**32,
    }


def session_packets(
    username: str,
    session_id: str,
    usage: list[tuple[int, int]],
    *,
    started_at: int,
    step: int = 600,
) -> list[dict[str, str | int]]:
    """Start, one Interim-Update per entry but the last, and Stop with the last entry.

    Each packet carries Event-Timestamp (started_at + session time), as a NAS does, so the
    session's start derived from every packet is the same even though they are sent at once.
    """
    base: dict[str, str | int] = {
        "User-Name": username,
        "Acct-Session-Id": session_id,
        "NAS-IP-Address": "127.0.0.1",
        "NAS-Port": 7,
        "Framed-IP-Address": "100.64.0.10",
        "Calling-Station-Id": "AA-BB-CC-00-11-22",
    }
    packets: list[dict[str, str | int]] = [
        {**base, "Acct-Status-Type": "Start", "Acct-Session-Time": 0, "Event-Timestamp": started_at}
    ]
    for i, (down, up) in enumerate(usage):
        status = "Stop" if i == len(usage) - 1 else "Interim-Update"
        elapsed = step * (i + 1)
        packets.append(
            {
                **base,
                "Acct-Status-Type": status,
                "Acct-Session-Time": elapsed,
                "Event-Timestamp": started_at + elapsed,
                **octets(up, "Input"),
                **octets(down, "Output"),
            }
        )
    return packets


__all__ = [
    "DEMO_ENV",
    "GB",
    "Ispbill",
    "Process",
    "create_admin",
    "free_port",
    "log_in",
    "radclient",
    "session_packets",
    "wait_until",
]


def send_accounting_from(
    source_ip: str, port: int, secret: str, attributes: dict[str, str | int], timeout: float = 1.0
) -> bytes | None:
    """One Accounting-Request from a chosen loopback source address (pyrad builds it); the
    reply datagram, or None when the server stays silent."""
    import socket

    from pyrad.packet import AcctPacket

    from usage_collector.adapters.radius_dictionary import load_dictionary

    packet = AcctPacket(secret=secret.encode(), dict=load_dictionary())
    for name, value in attributes.items():
        packet[name] = value
    raw = packet.RequestPacket()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source_ip, 0))
        sock.settimeout(timeout)
        sock.sendto(raw, ("127.0.0.1", port))
        try:
            return sock.recv(4096)
        except TimeoutError:
            return None
