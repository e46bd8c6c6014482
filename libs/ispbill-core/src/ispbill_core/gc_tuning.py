"""The garbage collector of a long-running ispbill process (ADR 0028).

CPython's defaults (700, 10, 10) collect the youngest generation every 700 net allocations and
the whole heap every hundred of those, once enough objects have survived. A rating worker
allocates several objects per accounting record and keeps tens of thousands of sessions in
its cache: at 100,000 records, bench-rating measured 6,880 collections taking 10.3 s of a
27 s run on SQLite, and 3,759 records/s against 4,985 with the thresholds below.

`tune()` first freezes what the process holds after its imports (modules, classes, settings:
never garbage, now never scanned), then raises the thresholds: the youngest generation is
collected every 50,000 allocations (a pause of a few ms), the middle one every 20 of those and
the oldest every 100 of those (at most; CPython also waits until enough objects survived).
Reference counting still frees everything that is not in a cycle at once; only garbage in
cycles waits longer: young cycles up to 50,000 allocations, cycles that survived into the
older generations up to about a million or a hundred million.
"""

from __future__ import annotations

import gc

__all__ = ["DEFAULT_THRESHOLDS", "parse_thresholds", "tune"]

DEFAULT_THRESHOLDS = (50_000, 20, 100)


def parse_thresholds(text: str) -> tuple[int, int, int] | None:
    """ "python" (CPython's own settings, untouched: None) or three positive integers
    "gen0,gen1,gen2"; ValueError otherwise."""
    if text.strip().lower() == "python":
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() and 0 < int(p) <= 10_000_000 for p in parts):
        raise ValueError(
            f"ISPBILL_GC_THRESHOLDS must be 'python' or three positive integers"
            f" 'gen0,gen1,gen2' (default {','.join(map(str, DEFAULT_THRESHOLDS))}), not {text!r}"
        )
    gen0, gen1, gen2 = (int(p) for p in parts)
    return gen0, gen1, gen2


def tune(thresholds: tuple[int, int, int] | None = DEFAULT_THRESHOLDS) -> None:
    """Freeze what the process holds now and set `thresholds`; with None, leave the collector
    as CPython set it."""
    if thresholds is None:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
