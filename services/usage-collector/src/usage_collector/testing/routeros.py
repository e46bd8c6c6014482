"""A stand-in for a MikroTik router's API service: the RouterOS API wire protocol over TCP.

No RouterOS runs here, so the poller's tests talk to this instead. It speaks the protocol as
the MikroTik API documentation describes it: sentences of words, each word prefixed by its
length in 1 to 5 bytes, a sentence ended by an empty word; replies `!re` (one per item),
`!done`, `!trap` (=message=, then `!done`) and `!fatal` (then the connection closes), with
`.tag` echoed. Commands: `/login` (post-6.43 plain name/password, and the legacy MD5
challenge-response), `/interface/print` (rx-byte/tx-byte only with `=stats=`, as the router
shows them in `print stats`), `/queue/simple/print` (`bytes` = "upload/download"),
`/system/resource/print`, `/quit`; `=.proplist=` and `?name=value` queries are honoured.

The router's state is programmable (interfaces, simple queues, counters, uptime), PPPoE
sessions can disconnect and reconnect (the dynamic interface vanishes and comes back with a
new `.id` and zeroed counters), and faults can be injected: drop the connection on a command
(after some of its rows), stall without answering, refuse logins.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import secrets
import ssl
from dataclasses import dataclass, field

# --- the wire format ------------------------------------------------------------------------

MAX_WORD_LENGTH = 0xFFFFFFFF  # the 5-byte form carries a 32-bit length


class WireError(ValueError):
    """Bytes that are not a well-formed RouterOS API length or sentence."""


def encode_length(length: int) -> bytes:
    """A word's length as the API sends it: 1, 2, 3, 4 or 5 bytes, big-endian.

    < 0x80: one byte; < 0x4000: two, the first with its top bit set (0x8000); < 0x200000:
    three (0xC00000); < 0x10000000: four (0xE0000000); else 0xF0 and four bytes of length.
    """
    if length < 0:
        raise WireError(f"negative length {length}")
    if length < 0x80:
        return length.to_bytes(1, "big")
    if length < 0x4000:
        return (length | 0x8000).to_bytes(2, "big")
    if length < 0x200000:
        return (length | 0xC00000).to_bytes(3, "big")
    if length < 0x10000000:
        return (length | 0xE0000000).to_bytes(4, "big")
    if length <= MAX_WORD_LENGTH:
        return b"\xf0" + length.to_bytes(4, "big")
    raise WireError(f"length {length} does not fit the API's 5-byte form")


def length_width(first_byte: int) -> int:
    """How many bytes the length starting with `first_byte` takes (1 to 5)."""
    if first_byte < 0x80:
        return 1
    if first_byte < 0xC0:
        return 2
    if first_byte < 0xE0:
        return 3
    if first_byte < 0xF0:
        return 4
    if first_byte == 0xF0:
        return 5
    # 0xF8-0xFF are the protocol's reserved control bytes; 0xF1-0xF7 mean nothing
    raise WireError(f"reserved control byte 0x{first_byte:02x}")


def decode_length(data: bytes) -> tuple[int, int]:
    """(length, bytes consumed) of the length prefix at the start of `data`."""
    if not data:
        raise WireError("no length byte")
    width = length_width(data[0])
    if len(data) < width:
        raise WireError(f"a {width}-byte length cut short after {len(data)} bytes")
    if width == 5:
        return int.from_bytes(data[1:5], "big"), 5
    value = int.from_bytes(data[:width], "big")
    masks = {1: 0, 2: 0x8000, 3: 0xC00000, 4: 0xE0000000}
    return value ^ masks[width], width


def encode_word(word: str | bytes) -> bytes:
    raw = word.encode() if isinstance(word, str) else word
    return encode_length(len(raw)) + raw


def encode_sentence(words: list[str]) -> bytes:
    return b"".join(encode_word(word) for word in words) + b"\x00"


def decode_words(data: bytes) -> list[bytes]:
    """Every word in `data` (a whole number of words), empty words included."""
    words: list[bytes] = []
    offset = 0
    while offset < len(data):
        length, used = decode_length(data[offset:])
        start = offset + used
        if start + length > len(data):
            raise WireError("word cut short")
        words.append(data[start : start + length])
        offset = start + length
    return words


async def read_length(reader: asyncio.StreamReader) -> int:
    first = await reader.readexactly(1)
    rest = await reader.readexactly(length_width(first[0]) - 1)
    return decode_length(first + rest)[0]


async def read_word(reader: asyncio.StreamReader) -> bytes:
    return await reader.readexactly(await read_length(reader))


async def read_sentence(reader: asyncio.StreamReader) -> list[str]:
    words: list[str] = []
    while word := await read_word(reader):
        words.append(word.decode("utf-8", errors="replace"))
    return words


# --- the router's state ---------------------------------------------------------------------


@dataclass
class Interface:
    id: str
    name: str
    type: str
    rx_byte: int = 0
    tx_byte: int = 0
    running: bool = True


@dataclass
class SimpleQueue:
    id: str
    name: str
    target: str
    upload: int = 0  # bytes sent by the target
    download: int = 0  # bytes sent to the target
    dynamic: bool = False
    disabled: bool = False


@dataclass
class Fault:
    """What to do the next time `command` arrives: drop after `rows` rows, or stall."""

    command: str
    action: str  # "drop" | "stall"
    rows: int = 0


@dataclass
class RouterOsStandIn:
    """A router's API service on 127.0.0.1 with programmable interfaces and queues."""

    users: dict[str, str] = field(default_factory=lambda: {"ispbill": "s3cret"})
    tls: ssl.SSLContext | None = None
    uptime_seconds: int = 3 * 86400 + 4 * 3600 + 5 * 60 + 6
    interfaces: dict[str, Interface] = field(default_factory=dict)
    queues: dict[str, SimpleQueue] = field(default_factory=dict)
    #: every command received, as (peer port, words); logins included
    commands: list[tuple[int, list[str]]] = field(default_factory=list)
    logins_ok: int = 0
    logins_refused: int = 0
    connections_accepted: int = 0

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._faults: list[Fault] = []
        self._stalls: list[asyncio.Event] = []
        self.port = 0

    # --- running -----------------------------------------------------------------------------

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", port or self.port, ssl=self.tls
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Close the listener and every open connection (a router going away)."""
        if self._server is not None:
            self._server.close()
        self.drop_connections()
        for stall in self._stalls:
            stall.set()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    def drop_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def __aenter__(self) -> RouterOsStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- programming the state ---------------------------------------------------------------

    def _next_id(self) -> str:
        return f"*{next(self._ids):X}"

    def add_interface(self, name: str, type: str = "ether", rx: int = 0, tx: int = 0) -> Interface:
        interface = Interface(self._next_id(), name, type, rx, tx)
        self.interfaces[name] = interface
        return interface

    def connect_pppoe(self, username: str, rx: int = 0, tx: int = 0) -> Interface:
        """A PPPoE session comes up: the dynamic interface <pppoe-username> appears."""
        return self.add_interface(f"<pppoe-{username}>", "pppoe-in", rx, tx)

    def disconnect_pppoe(self, username: str) -> None:
        del self.interfaces[f"<pppoe-{username}>"]

    def reconnect_pppoe(self, username: str, rx: int = 0, tx: int = 0) -> Interface:
        """The session drops and comes back: a new interface, new .id, counters from zero."""
        self.disconnect_pppoe(username)
        return self.connect_pppoe(username, rx, tx)

    def pppoe(self, username: str) -> Interface:
        return self.interfaces[f"<pppoe-{username}>"]

    def add_queue(
        self,
        name: str,
        target: str,
        upload: int = 0,
        download: int = 0,
        *,
        dynamic: bool = False,
    ) -> SimpleQueue:
        queue = SimpleQueue(self._next_id(), name, target, upload, download, dynamic)
        self.queues[name] = queue
        return queue

    def reboot(self, uptime_seconds: int = 42) -> None:
        """Counters of static items start again from zero; dynamic ones are gone."""
        self.uptime_seconds = uptime_seconds
        self.interfaces = {k: i for k, i in self.interfaces.items() if i.type != "pppoe-in"}
        self.queues = {k: q for k, q in self.queues.items() if not q.dynamic}
        for interface in self.interfaces.values():
            interface.rx_byte = interface.tx_byte = 0
        for queue in self.queues.values():
            queue.upload = queue.download = 0
        self.drop_connections()

    def drop_on(self, command: str, *, after_rows: int = 0) -> None:
        """The next `command` gets `after_rows` rows, then the connection is cut."""
        self._faults.append(Fault(command, "drop", after_rows))

    def stall_on(self, command: str) -> None:
        """The next `command` is never answered (the connection stays open)."""
        self._faults.append(Fault(command, "stall"))

    def commands_named(self, command: str) -> list[list[str]]:
        return [words for _, words in self.commands if words and words[0] == command]

    # --- serving -----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        self._writers.add(writer)
        peer_port = writer.get_extra_info("peername")[1]
        session = _Session()
        try:
            while True:
                words = await read_sentence(reader)
                if not words:
                    continue  # an empty sentence is allowed and ignored
                self.commands.append((peer_port, words))
                if not await self._answer(session, words, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, WireError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _answer(self, session: _Session, words: list[str], writer: asyncio.StreamWriter):
        """Reply to one sentence; False closes the connection."""
        command, attributes, queries, tag = _parse(words)
        send = _Sender(writer, tag)
        if command == "/quit":
            await send.fatal("session terminated on request")
            return False
        if command == "/login":
            return await self._login(session, attributes, send)
        if not session.logged_in:
            await send.fatal("not logged in")
            return False
        fault = next((f for f in self._faults if f.command == command), None)
        if fault is not None:
            self._faults.remove(fault)
        rows = self._print(command, attributes, queries)
        if rows is None:
            await send.trap("no such command prefix", category=0)
            return True
        if fault is not None and fault.action == "stall":
            stalled = asyncio.Event()
            self._stalls.append(stalled)
            await stalled.wait()
            return False
        for number, row in enumerate(rows):
            if fault is not None and number == fault.rows:
                return False
            await send("!re", row)
        if fault is not None:
            return False
        await send("!done")
        return True

    async def _login(self, session: _Session, attributes: dict[str, str], send: _Sender) -> bool:
        name = attributes.get("name")
        if name is None:
            # pre-6.43: ask for a challenge, answer with MD5(0 + password + challenge)
            session.challenge = secrets.token_bytes(16)
            await send("!done", {"ret": session.challenge.hex()})
            return True
        password = self.users.get(name)
        if "password" in attributes:
            ok = password is not None and secrets.compare_digest(attributes["password"], password)
        elif "response" in attributes and session.challenge is not None:
            expected = (
                "00"
                + hashlib.md5(  # the protocol's own legacy scheme
                    b"\x00" + (password or "").encode() + session.challenge,
                    usedforsecurity=False,
                ).hexdigest()
            )
            ok = password is not None and secrets.compare_digest(attributes["response"], expected)
        else:
            ok = False
        if not ok:
            self.logins_refused += 1
            await send.trap("invalid user name or password (6)")
            return False
        self.logins_ok += 1
        session.logged_in = True
        await send("!done")
        return True

    def _print(
        self, command: str, attributes: dict[str, str], queries: list[tuple[str, str]]
    ) -> list[dict[str, str]] | None:
        if command == "/interface/print":
            stats = "stats" in attributes
            items = [_interface_row(i, stats) for i in self.interfaces.values()]
        elif command == "/queue/simple/print":
            items = [_queue_row(q) for q in self.queues.values()]
        elif command == "/system/resource/print":
            items = [
                {
                    "uptime": _format_uptime(self.uptime_seconds),
                    "version": "7.16 (stable)",
                    "board-name": "ispbill-standin",
                }
            ]
        else:
            return None
        items = [row for row in items if all(row.get(k) == v for k, v in queries)]
        proplist = attributes.get(".proplist")
        if proplist:
            keep = proplist.split(",")
            items = [{k: row[k] for k in keep if k in row} for row in items]
        return items


@dataclass
class _Session:
    logged_in: bool = False
    challenge: bytes | None = None


class _Sender:
    def __init__(self, writer: asyncio.StreamWriter, tag: str | None) -> None:
        self.writer = writer
        self.tag = tag

    async def __call__(self, reply: str, attributes: dict[str, str] | None = None) -> None:
        words = [reply, *(f"={k}={v}" for k, v in (attributes or {}).items())]
        if self.tag is not None:
            words.append(f".tag={self.tag}")
        self.writer.write(encode_sentence(words))
        await self.writer.drain()

    async def trap(self, message: str, *, category: int | None = None) -> None:
        attributes = {"message": message}
        if category is not None:
            attributes["category"] = str(category)
        await self("!trap", attributes)
        await self("!done")

    async def fatal(self, message: str) -> None:
        # !fatal carries its reason as a bare word, not an attribute
        self.writer.write(encode_sentence(["!fatal", message]))
        await self.writer.drain()


def _parse(words: list[str]) -> tuple[str, dict[str, str], list[tuple[str, str]], str | None]:
    command, attributes, queries, tag = words[0], {}, [], None
    for word in words[1:]:
        if word.startswith("="):
            key, _, value = word[1:].partition("=")
            attributes[key] = value
        elif word.startswith(".tag="):
            tag = word[len(".tag=") :]
        elif word.startswith("?="):
            key, _, value = word[2:].partition("=")
            queries.append((key, value))
        elif word.startswith("?") and "=" in word:
            key, _, value = word[1:].partition("=")
            queries.append((key, value))
    return command, attributes, queries, tag


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _interface_row(interface: Interface, stats: bool) -> dict[str, str]:
    row = {
        ".id": interface.id,
        "name": interface.name,
        "type": interface.type,
        "mtu": "1480" if interface.type == "pppoe-in" else "1500",
        "dynamic": _flag(interface.type == "pppoe-in"),
        "running": _flag(interface.running),
        "disabled": "false",
    }
    if stats:
        row |= {
            "rx-byte": str(interface.rx_byte),
            "tx-byte": str(interface.tx_byte),
            "rx-packet": str(interface.rx_byte // 1000),
            "tx-packet": str(interface.tx_byte // 1000),
        }
    return row


def _queue_row(queue: SimpleQueue) -> dict[str, str]:
    return {
        ".id": queue.id,
        "name": queue.name,
        "target": queue.target,
        "parent": "none",
        "max-limit": "10000000/50000000",
        "bytes": f"{queue.upload}/{queue.download}",
        "packets": f"{queue.upload // 1000}/{queue.download // 1000}",
        "dynamic": _flag(queue.dynamic),
        "disabled": _flag(queue.disabled),
    }


def _format_uptime(seconds: int) -> str:
    """RouterOS 7 style: 1w2d3h4m5s, zero parts left out."""
    parts = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
