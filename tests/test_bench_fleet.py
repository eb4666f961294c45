"""bench/fleet.py: its folders of copies, its floor, its table row (not the timings)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "fleet.py"


@pytest.fixture(scope="module")
def fleet() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lora_audit_bench_fleet", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_folder_holds_hard_links_of_the_sample(fleet: ModuleType, tmp_path: Path) -> None:
    fleet.build(tmp_path / "f", fleet.SAMPLE, 3)
    dirs = sorted((tmp_path / "f").iterdir())
    assert [d.name for d in dirs] == ["a00000", "a00001", "a00002"]
    weights = [d / "adapter_model.safetensors" for d in dirs]
    assert {w.read_bytes() for w in weights} == {(fleet.SAMPLE / weights[0].name).read_bytes()}
    assert not (dirs[0] / "README.md").exists()


def test_the_floor_reads_every_tensor_and_the_row_is_a_median(
    fleet: ModuleType, tmp_path: Path
) -> None:
    fleet.build(tmp_path / "f", fleet.SAMPLE, 2)
    run = fleet.measure([sys.executable, "-c", fleet.FLOOR, str(tmp_path / "f")], env=None)
    assert run.seconds > 0 and run.rss_mb > 10
    with pytest.raises(RuntimeError):
        fleet.measure([sys.executable, "-c", "raise SystemExit(4)"])
    floor = [fleet.Run(seconds=s, rss_mb=20.0) for s in (1.0, 2.0, 3.0)]
    audit = [fleet.Run(seconds=s, rss_mb=50.0) for s in (3.0, 2.0, 9.0)]
    row = fleet.row(100, floor, audit)  # ratios 3, 1, 3: the median of the ratios, 3
    assert row.startswith("| 100 | 2.00 s | 3.00 s | **3.0×** | 30.0 ms | 20 MB | 50 MB |")
    assert os.path.isdir(tmp_path / "f")
