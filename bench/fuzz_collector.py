"""Fuzz the usage collector's decoder: N malformed or mutated datagrams, zero crashes allowed.

Run: `uv run --frozen python bench/fuzz_collector.py [--packets N] [--seed S] [--workers W]`
(default 1 000 000 packets, seed 1, one worker per core). Each datagram goes through
`screen_accounting_request`, the function that turns a datagram into a record or a drop.
Deterministic: packet i of a run is drawn from random.Random(f"{seed}:{i // CHUNK}").

Classes, mixed evenly:
  a) arbitrary bytes, half of them dressed as an Accounting-Request header;
  b) correctly signed packets with mutations (bit flips, truncation, a lying Length field,
     attributes of length 0/1/255, garbage Vendor-Specific, duplicated attributes, extra
     Message-Authenticator, padding), not re-signed;
  c) packets with random attribute values (wrong sizes, huge counts, garbage VSAs, duplicates)
     re-signed with the right secret, so the attribute decoding is what gets fuzzed.

crashes = exceptions out of screen_accounting_request. invalid_accepted = records accepted
from a datagram that an independent RFC 2866/3579 check (here, not the collector's code) does
not find authentic, plus accepted records that are not sane (negative or >64-bit counters,
naive datetimes). Exits 1 when either is non-zero.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from usage_collector.adapters.memory_nas_registry import InMemoryNasRegistry
from usage_collector.adapters.radius_dictionary import DictionaryAttributeDecoder
from usage_collector.application.screen_accounting_request import (
    AcceptedRequest,
    screen_accounting_request,
)
from usage_collector.testing import (
    FUZZ_NASES,
    INTEGER_ATTRIBUTES,
    MESSAGE_AUTHENTICATOR,
    OTHER_ATTRIBUTES,
    VENDOR_SPECIFIC,
    VENDORS,
    attribute,
    independently_authentic,
    insane_fields,
    sign,
)

CHUNK = 10_000
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
NASES = FUZZ_NASES
SOURCES = sorted(NASES)


def is_sane(result: AcceptedRequest) -> bool:
    return not insane_fields(result, NASES)


# --- generators -------------------------------------------------------------------------------


def random_bytes(rng: random.Random, n: int) -> bytes:
    return rng.getrandbits(8 * n).to_bytes(n, "big") if n else b""


def random_attribute(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:  # integer attribute: mostly 4 octets, sometimes extreme or the wrong size
        roll = rng.random()
        if roll < 0.6:
            value = struct.pack("!I", rng.getrandbits(32))
        elif roll < 0.8:
            value = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x80\x00\x00\x00"])
        else:
            value = random_bytes(rng, rng.randrange(10))
        return attribute(rng.choice(INTEGER_ATTRIBUTES), value)
    if kind == 1:  # text/address attribute with arbitrary octets
        return attribute(rng.choice(OTHER_ATTRIBUTES), random_bytes(rng, rng.randrange(41)))
    if kind == 2:  # Vendor-Specific: vendor id, sub-attributes, garbage tail
        vendor = rng.choice(VENDORS) if rng.random() < 0.7 else rng.getrandbits(32)
        subs = b"".join(
            attribute(rng.randrange(256), random_bytes(rng, rng.randrange(21)))
            for _ in range(rng.randrange(5))
        )
        value = struct.pack("!I", vendor) + subs + random_bytes(rng, rng.randrange(7))
        return attribute(VENDOR_SPECIFIC, value[:253])
    if kind == 3:  # Acct-Status-Type, any value
        status = rng.choice([1, 2, 3, 7, 8, 0, 15]) if rng.random() < 0.8 else rng.getrandbits(32)
        return attribute(40, struct.pack("!I", status))
    attribute_type = rng.randrange(256)
    if attribute_type == MESSAGE_AUTHENTICATOR:  # a second MA would leave the packet unsigned
        attribute_type = 1
    return attribute(attribute_type, random_bytes(rng, rng.randrange(31)))


def signed_packet(rng: random.Random) -> tuple[bytes, str]:
    source = rng.choice(SOURCES)
    nas = NASES[source]
    parts = []
    if rng.random() < 0.7:
        parts.append(attribute(40, struct.pack("!I", rng.choice([1, 2, 3, 7, 8]))))
    if rng.random() < 0.7:
        parts.append(attribute(44, random_bytes(rng, rng.randrange(1, 21))))
    parts += [random_attribute(rng) for _ in range(rng.randrange(13))]
    if parts and rng.random() < 0.3:
        parts += [rng.choice(parts)] * rng.randrange(1, 6)
    rng.shuffle(parts)
    body = b""
    for part in parts:
        if 20 + len(body) + len(part) + 18 > 4096:
            break
        body += part
    ma = nas.require_message_authenticator or rng.random() < 0.5
    return sign(rng.randrange(256), body, nas.secret, ma=ma), source


def mutate(rng: random.Random, packet: bytes) -> bytes:
    data = bytearray(packet)
    kind = rng.randrange(9)
    if kind == 0 and data:  # bit flips
        for _ in range(rng.randrange(1, 9)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncation
        del data[rng.randrange(len(data) + 1) :]
    elif kind == 2 and len(data) >= 4:  # Length field lies
        lies = [0, 1, 19, 20, 21, len(data) - 1, len(data) + 1, 4096, 4097, 65535]
        lie = rng.choice(lies) if rng.random() < 0.7 else rng.randrange(65536)
        data[2:4] = struct.pack("!H", lie)
    elif kind == 3:  # an attribute of length 0, 1 or 255
        bad = bytes([rng.randrange(256), rng.choice([0, 1, 255])]) + random_bytes(
            rng, rng.randrange(5)
        )
        at = rng.randrange(min(20, len(data)), len(data) + 1)
        data[at:at] = bad
    elif kind == 4:  # garbage VSA appended
        data += attribute(VENDOR_SPECIFIC, random_bytes(rng, rng.randrange(41)))
    elif kind == 5:  # duplicated attributes (the body's head appended again)
        data += data[20:][: rng.randrange(201)]
    elif kind == 6:  # padding past Length (legitimately ignored)
        data += random_bytes(rng, rng.randrange(1, 31))
    elif kind == 7 and len(data) > 20:  # overwrite octets of the body
        i = rng.randrange(20, len(data))
        chunk = random_bytes(rng, rng.randrange(1, 9))
        data[i : i + len(chunk)] = chunk
    elif kind == 8:  # an extra Message-Authenticator of any size
        data += attribute(MESSAGE_AUTHENTICATOR, random_bytes(rng, rng.randrange(21)))
    return bytes(data)


def arbitrary(rng: random.Random) -> tuple[bytes, str]:
    source = rng.choice(SOURCES)
    if rng.random() < 0.5:
        n = rng.choice([rng.randrange(40), rng.randrange(400), rng.randrange(4200)])
        return random_bytes(rng, n), source
    body = random_bytes(rng, rng.randrange(300))
    code = rng.choice([4, 4, 4, 1, 5, 0, 255])
    header = struct.pack("!BBH", code, rng.randrange(256), 20 + len(body))
    return header + random_bytes(rng, 16) + body, source


def generate(rng: random.Random) -> tuple[bytes, str]:
    kind = rng.randrange(3)
    if kind == 0:
        return arbitrary(rng)
    packet, source = signed_packet(rng)
    if kind == 1:
        for _ in range(rng.randrange(1, 4)):
            packet = mutate(rng, packet)
    return packet, source


# --- running ----------------------------------------------------------------------------------


@dataclass
class Tally:
    packets: int = 0
    crashes: int = 0
    invalid_accepted: int = 0
    accepted: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.packets += other.packets
        self.crashes += other.crashes
        self.invalid_accepted += other.invalid_accepted
        self.accepted += other.accepted
        for reason, n in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n
        self.examples += other.examples[: max(0, 5 - len(self.examples))]


def run_chunk(args: tuple[int, int, int]) -> Tally:
    seed, chunk, count = args
    rng = random.Random(f"{seed}:{chunk}")
    registry = InMemoryNasRegistry(list(NASES.values()))
    decoder = DictionaryAttributeDecoder()
    tally = Tally()
    for _ in range(count):
        datagram, source = generate(rng)
        tally.packets += 1
        try:
            result = screen_accounting_request(
                datagram, source, NOW, registry=registry, decode_attributes=decoder
            )
        except Exception:  # counting every crash is the point
            tally.crashes += 1
            if len(tally.examples) < 5:
                tally.examples.append(
                    f"crash source={source} packet={datagram.hex()}\n{traceback.format_exc()}"
                )
            continue
        if isinstance(result, AcceptedRequest):
            tally.accepted += 1
            if not independently_authentic(datagram, NASES[source]) or not is_sane(result):
                tally.invalid_accepted += 1
                if len(tally.examples) < 5:
                    tally.examples.append(f"invalid accepted source={source} {datagram.hex()}")
        else:
            tally.reasons[result.reason.value] = tally.reasons.get(result.reason.value, 0) + 1
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    jobs = [
        (args.seed, chunk, min(CHUNK, args.packets - start))
        for chunk, start in enumerate(range(0, args.packets, CHUNK))
    ]
    print(f"fuzzing {args.packets} packets, seed {args.seed}, {args.workers} worker(s)")
    total = Tally()
    started = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            for tally in pool.map(run_chunk, jobs):
                total.add(tally)
    else:
        for job in jobs:
            total.add(run_chunk(job))
    seconds = time.perf_counter() - started
    print(f"{total.packets} packets in {seconds:.1f} s: {total.packets / seconds:.0f} packets/s")
    print(f"accepted {total.accepted}; dropped: {dict(sorted(total.reasons.items()))}")
    for example in total.examples:
        print(example, file=sys.stderr)
    print(
        f"RESULT fuzz packets={total.packets} crashes={total.crashes}"
        f" invalid_accepted={total.invalid_accepted}"
    )
    return 1 if total.crashes or total.invalid_accepted else 0


if __name__ == "__main__":
    sys.exit(main())
