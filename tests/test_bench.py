"""bench/bench.py: its synthetic adapters and its process measurements (not the timings)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from lora_audit.engine.device import EngineOptions
from lora_audit.engine.spectra import spectra
from lora_audit.formats import load_adapter

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lora_audit_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_synthetic_adapter_is_peft_with_the_planted_spectrum(bench: ModuleType,
                                                             tmp_path: Path) -> None:  # fmt: skip
    shape = bench.ModelShape("tiny", hidden=48, intermediate=80, kv=16, layers=2)
    directory = bench.write_adapter(tmp_path / "tiny", shape, 8, layers=2)
    weights = directory / "adapter_model.safetensors"
    data_bytes = shape.file_bytes(8)
    assert data_bytes < weights.stat().st_size < data_bytes + 16384
    adapter = load_adapter(directory)
    assert len(adapter.layers) == 14 and {layer.dtype for layer in adapter.layers} == {"BF16"}
    assert adapter.layers[0].name.startswith("model.layers.0.")
    sigmas = spectra(adapter, options=EngineOptions(device="cpu"))
    for i in range(2):
        for m, (module, _, _) in enumerate(shape.modules()):
            layer = next(x for x in adapter.layers if x.name == f"model.layers.{i}.{module}")
            planted = layer.scale * np.array(bench.planted_spectrum(8, layer=i, module=m))
            assert np.allclose(sigmas[layer.name], planted, rtol=0, atol=0.02 * planted[0])
    mtime = weights.stat().st_mtime_ns
    bench.write_adapter(tmp_path / "tiny", shape, 8, layers=2)  # cached: not rewritten
    assert weights.stat().st_mtime_ns == mtime


def test_child_rss_is_the_childs_own(bench: ModuleType) -> None:
    import torch  # noqa: F401  (make this process big, as the benchmark's is)

    small = bench.run_process([sys.executable, "-c", "pass"])
    touch = "b = bytearray(300 << 20)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\n"
    big = bench.run_process([sys.executable, "-c", touch])
    assert small.returncode == 0 and big.returncode == 0
    assert small.max_rss_bytes < 100 << 20
    assert big.max_rss_bytes > 300 << 20
    assert small.seconds > 0


def test_linear_fit(bench: ModuleType) -> None:
    fit = bench.linear_fit([1, 2, 4, 8], [3.0, 5.0, 9.0, 17.0])
    assert fit.slope == pytest.approx(2.0) and fit.intercept == pytest.approx(1.0)
    assert fit.r2 == pytest.approx(1.0)


def test_report_round_trips_through_bench_json(bench: ModuleType) -> None:
    import json

    from lora_bench.report import Report, targets
    from lora_bench.results import (
        CompressRun,
        DenseBaseline,
        DenseShape,
        EnginePoint,
        InspectRun,
        Row,
        Timing,
    )
    from lora_bench.tables import markdown

    def t(seconds: float, rss: int | None = None) -> Timing:
        return Timing.of([seconds, 2 * seconds], rss=[rss] if rss else None)

    dense = DenseBaseline("cpu", (DenseShape(8, 4, 3, (1.0, 3.0), 1e-7),
                                  DenseShape(4, 8, 2, (5.0,), None, reused=True)), 123)  # fmt: skip
    row = Row(
        size="1b", rank=16, layers=4, matrices=28, file_bytes=4 << 20, adapter="a",
        floor_process=t(1.0, 500 << 20), floor_numpy_process=t(0.2, 90 << 20),
        inspect=(InspectRun("cpu", t(0.5, 80 << 20)),),
        in_process=EnginePoint("cpu", 28, 4 << 20, t(0.01), t(0.1)),
        compress=CompressRun(t(0.8, 100 << 20), 1 << 20, t(1.6, 400 << 20)), dense=(dense,),
    )  # fmt: skip
    help_ = t(0.2, 50 << 20)
    report = Report("python bench/bench.py --quick", {"cpu": "x", "cpu_count": 2,
                    "memory_bytes": 1 << 30, "python": "3", "torch": "2", "torch_threads": 2,
                    "platform": "p"}, "cpu", 2, help_, (row,),
                    targets=targets(help_.min, (row,)))  # fmt: skip
    data = json.loads(json.dumps(report.to_dict()))
    assert data["results"][0]["inspect_process"]["device"] == "cpu"
    assert data["results"][0]["dense"]["cpu"]["extrapolated_seconds"] == 2.0 * 3 + 5.0 * 2
    assert Report.from_dict(data) == report
    text = markdown(report)
    assert "| 0.50× |" in text  # inspect / floor
    assert "0.50× |" in text.split("**Compress**")[1]  # compress / (floor + write)
    assert [c.met for c in report.targets] == [True, True, True, True]


def test_structured_bench_agrees_with_the_dense_svd() -> None:
    """bench/structured.py's structured path, on small layers of every structure."""
    import torch

    path = BENCH.with_name("structured.py")
    spec = importlib.util.spec_from_file_location("lora_audit_bench_structured", path)
    assert spec is not None and spec.loader is not None
    structured = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(structured)
    g = torch.Generator().manual_seed(0)
    cases = [
        structured.loha_case(24, 20, 3, g),
        structured.lokr_case(2, 12, 10, 3, g),
        structured.kron_case(2, 12, 10, g),
        structured.tucker_case(16, 12, 3, 4, g),
    ]
    for layer, tensors in cases:
        fast = structured.structured(layer, tensors)
        dense = torch.linalg.svdvals(structured.dense(layer, tensors))
        n = min(fast.numel(), dense.numel())
        assert float((fast[:n] - dense[:n]).abs().max()) <= 1e-9 * float(dense[0])
