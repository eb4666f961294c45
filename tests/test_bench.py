"""bench/bench.py: its synthetic adapters and its process measurements (not the timings)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from lora_audit.engine.spectra import EngineOptions, spectra
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
