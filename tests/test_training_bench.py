"""bench/training_overhead.py runs end to end (a few steps; not the timings)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.peft

BENCH = Path(__file__).resolve().parents[1] / "bench" / "training_overhead.py"


def test_the_training_overhead_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("lora_audit_training_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    tiny = ["--hidden", "16", "--layers", "1", "--rank", "2", "--batch", "1", "--length", "4"]
    result = module.main(["--steps", "2", "--every", "1", "--repeats", "1", *tiny])
    assert result["audit_ms"] > 0 and 0 < result["callback_share"] < 1
    assert "time inside the callback" in capsys.readouterr().out
