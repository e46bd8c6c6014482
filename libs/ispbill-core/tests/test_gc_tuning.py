"""The collector settings of a server process (ADR 0028)."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from ispbill_core.gc_tuning import DEFAULT_THRESHOLDS, parse_thresholds, tune

pytestmark = pytest.mark.unit


def test_thresholds_are_three_positive_integers_or_python() -> None:
    assert parse_thresholds("50000,20,100") == DEFAULT_THRESHOLDS
    assert parse_thresholds(" 700, 10 ,10 ") == (700, 10, 10)
    assert parse_thresholds("Python") is None
    for bad in ("", "1,2", "1,2,3,4", "0,10,10", "-1,10,10", "a,b,c", "1e9,1,1", "99999999,1,1"):
        with pytest.raises(ValueError, match="ISPBILL_GC_THRESHOLDS"):
            parse_thresholds(bad)


def test_tune_freezes_the_heap_and_sets_the_thresholds() -> None:
    """In a process of its own: the test run's collector stays as it is."""
    code = (
        "import gc; from ispbill_core.gc_tuning import tune;"
        " before = gc.get_freeze_count(); tune((1234, 5, 6));"
        " print(gc.get_threshold(), gc.get_freeze_count() > before)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(1234, 5, 6) True"


def test_python_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    tune(None)
    assert gc.get_threshold() == before
