"""The CPU path of the engine: raw reads, Gram-based spectra, NaN/Inf checks, no torch import."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import FakeAdapter, FakeLayer, write_peft
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_audit.engine.batches import map_groups
from lora_audit.engine.device import EngineOptions, device_type
from lora_audit.engine.host_buffers import HostFactors
from lora_audit.engine.spectra import spectra
from lora_audit.errors import InputError
from lora_audit.formats import load_adapter
from lora_audit.linalg.spectral import (
    GRAM_RELATIVE_TOLERANCE,
    gram_singular_values,
    qr_singular_values,
)

TOL = 1e-6


def dense(b: np.ndarray, a: np.ndarray, r: int) -> np.ndarray:
    out = np.zeros(r)
    s = np.linalg.svd(b @ a, compute_uv=False)[:r]
    out[: s.size] = s
    return out


def assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    top = max(float(ref[0]), np.finfo(np.float64).tiny)
    if ref[0] > 0:
        assert float(np.abs(got - ref).max()) / top <= TOL
    else:
        assert float(np.abs(got).max(initial=0.0)) <= TOL * max(1.0, float(np.abs(got).max()))


@st.composite
def pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    out = draw(st.integers(1, 40))
    inp = draw(st.integers(1, 40))
    r = draw(st.integers(1, 24))
    gen = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    b = gen.standard_normal((out, r))
    a = gen.standard_normal((r, inp))
    case = draw(st.sampled_from(["plain", "zero_b", "low_rank", "decay", "tiny", "huge", "bf16"]))
    if case == "zero_b":
        b[:] = 0
    elif case == "low_rank" and r > 1:
        b[:, draw(st.integers(1, r - 1)) :] = 0
    elif case == "decay":
        a = a * np.logspace(0, -6, r)[:, None]
    elif case == "tiny":
        b, a = b * 1e-20, a * 1e-15
    elif case == "huge":
        b, a = b * 1e15, a * 1e10
    elif case == "bf16":
        b = torch.tensor(b).to(torch.bfloat16).double().numpy()
        a = torch.tensor(a).to(torch.bfloat16).double().numpy()
    return b, a


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=pairs())
def test_gram_values_are_accurate_where_auto_keeps_them(
    pair: tuple[np.ndarray, np.ndarray],
) -> None:
    b, a = pair
    r = b.shape[1]
    ref = dense(b, a, r)
    sigma, bound = gram_singular_values((b.T @ b)[None], (a @ a.T)[None])
    assert sigma.shape == (1, r) and bound.shape == (1,)
    assert np.all(np.diff(sigma[0]) <= 0)
    if not (bound[0] > GRAM_RELATIVE_TOLERANCE * sigma[0, 0] and bound[0] > 0):
        assert_close(sigma[0], ref)
    assert_close(qr_singular_values(b, a), ref)


def test_gram_factor_handles_singular_grams_in_a_batch() -> None:
    gen = np.random.default_rng(0)
    b = gen.standard_normal((3, 10, 4))
    b[1] = 0  # untrained: G_B = 0, Cholesky fails for this one only
    b[2, :, 2:] = b[2, :, :2]  # rank-deficient
    a = gen.standard_normal((3, 4, 7))
    sigma, _ = gram_singular_values(b.transpose(0, 2, 1) @ b, a @ a.transpose(0, 2, 1))
    for i in range(3):
        assert_close(sigma[i], dense(b[i], a[i], 4))


@pytest.fixture
def dtype_adapter(tmp_path: Path) -> Path:
    """One layer per stored dtype, plus a conv and an embedding, two shapes per dtype."""
    gen = torch.Generator().manual_seed(11)
    layers = []
    for i, dtype in enumerate([torch.bfloat16, torch.float16, torch.float32, torch.float64]):
        for j, (out, inp) in enumerate([(24, 16), (9, 31)]):
            b = (torch.randn(out, 6, generator=gen) * 0.1).to(dtype)
            a = torch.randn(6, inp, generator=gen).to(dtype)
            layers.append(FakeLayer(f"model.layers.{i}.proj{j}", b, a))
    layers.append(FakeLayer("model.conv", torch.randn(5, 6, 1, 1, generator=gen).half(),
                            torch.randn(6, 3, 3, 3, generator=gen).half()))  # fmt: skip
    layers.append(FakeLayer("model.embed", torch.randn(12, 6, generator=gen),
                            torch.randn(6, 50, generator=gen), embedding=True))  # fmt: skip
    return write_peft(tmp_path / "dtypes", FakeAdapter(layers, {"r": 6, "lora_alpha": 12}))


def test_raw_reads_equal_torch_loading_bit_for_bit(dtype_adapter: Path) -> None:
    from safetensors.torch import load_file

    adapter = load_adapter(dtype_adapter)
    stored = load_file(str(adapter.tensor_file))  # the safetensors library's own decoding
    reader = HostFactors(adapter)
    try:
        for layer in adapter.layers:
            b, a = reader.load(layer)
            b_ref = stored[layer.b_key].double().reshape(b.shape).numpy()
            a_ref = stored[layer.a_key].double().reshape(a.shape).numpy()
            assert np.array_equal(b, b_ref)
            assert np.array_equal(a, a_ref)
            b_np, a_np = adapter.load_factors(layer)  # the numpy source decodes the same bits
            assert np.array_equal(b_np, b_ref)
            assert np.array_equal(a_np, a_ref)
    finally:
        reader.close()


@pytest.mark.parametrize("method", ["auto", "gram", "qr"])
def test_cpu_spectra_match_dense_for_every_dtype(dtype_adapter: Path, method: str) -> None:
    adapter = load_adapter(dtype_adapter)
    sigmas = spectra(adapter, options=EngineOptions(device="cpu", method=method))  # type: ignore[arg-type]
    for layer in adapter.layers:
        b, a = adapter.load_factors(layer)
        ref = abs(layer.scale) * dense(b, a, layer.rank)
        assert_close(sigmas[layer.name], ref)


class DictSource:
    """An in-memory tensor source (not a safetensors file)."""

    def __init__(self, tensors: dict[str, np.ndarray]) -> None:
        self.tensors = tensors

    def get(self, key: str) -> np.ndarray:
        return self.tensors[key]


def test_other_sources_go_through_load_factors(dtype_adapter: Path) -> None:
    adapter = load_adapter(dtype_adapter)
    assert adapter.source is not None
    keys = [k for layer in adapter.layers for k in (layer.a_key, layer.b_key)]
    memory = dataclasses.replace(
        adapter, source=DictSource({k: adapter.source.get(k).copy() for k in keys})
    )
    options = EngineOptions(device="cpu")
    from_file, from_memory = spectra(adapter, options=options), spectra(memory, options=options)
    for name, sigma in from_file.items():
        assert np.array_equal(sigma, from_memory[name])


def test_auto_redoes_inaccurate_grams_by_qr(tmp_path: Path) -> None:
    # B's large direction meets A's near-zero row: ‖B‖‖A‖ ≫ σ₁(BA); Gram alone is inaccurate.
    b = torch.tensor([[1e6, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    a = torch.tensor([[1e-9, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    fake = FakeAdapter([FakeLayer("m.q", b, a)], {"r": 2, "lora_alpha": 2})
    path = write_peft(tmp_path / "skewed", fake)
    adapter = load_adapter(path)
    _, bound = gram_singular_values((b.T @ b).numpy()[None], (a @ a.T).numpy()[None])
    assert bound[0] > GRAM_RELATIVE_TOLERANCE * 1.0  # σ₁ = 1: auto must redo this one
    got = spectra(adapter, options=EngineOptions(device="cpu", method="auto"))["m.q"]
    assert_close(got, dense(b.numpy(), a.numpy(), 2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("side", ["A", "B"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_names_the_tensor(tmp_path: Path, dtype: torch.dtype, side: str,
                                     value: float) -> None:  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    layers = [FakeLayer(f"m.layers.{i}.q", torch.randn(8, 4, generator=gen).to(dtype),
                        torch.randn(4, 8, generator=gen).to(dtype)) for i in range(3)]  # fmt: skip
    bad = layers[1].a if side == "A" else layers[1].b
    bad[2, 1] = value
    adapter = load_adapter(write_peft(tmp_path / "bad", FakeAdapter(layers)))
    key = f"base_model.model.m.layers.1.q.lora_{side}.weight"
    with pytest.raises(InputError, match="NaN or Inf") as info:
        spectra(adapter, options=EngineOptions(device="cpu"))
    assert repr(key) in str(info.value)
    with pytest.raises(InputError, match="NaN or Inf") as info:
        map_groups(adapter, lambda ls, b, a: [0] * len(ls), options=EngineOptions(device="cpu"))
    assert repr(key) in str(info.value)


def test_truncated_file_is_an_input_error(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    layers = [
        FakeLayer("m.q", torch.randn(64, 4, generator=gen), torch.randn(4, 64, generator=gen))
    ]
    path = write_peft(tmp_path / "cut", FakeAdapter(layers))
    adapter = load_adapter(path)  # header validated against the full file
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(InputError, match="past the end"):
        spectra(adapter, options=EngineOptions(device="cpu"))


def test_device_type_agrees_with_torch() -> None:
    assert device_type("cpu") == "cpu"
    assert device_type("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cpu_inspect_does_not_import_torch(mixed_adapter: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from lora_audit.cli import main\n"
        f"sys.argv = ['lora-audit', 'inspect', {str(mixed_adapter)!r}, '--device', 'cpu',\n"
        f"            '--format', 'json', '-o', {str(tmp_path / 'r.json')!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "print(sorted(m for m in ('torch', 'safetensors') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "r.json").stat().st_size > 0


def test_gpu_orchestration_agrees_with_the_cpu_path(mixed_adapter: Path) -> None:
    # _spectra_cuda's logic (Grams through map_groups, host finishing in a thread, QR redo)
    # runs unchanged on the CPU device; it must give the CPU path's numbers.
    from lora_audit.engine.spectra import Grams, _spectra_cpu, _spectra_cuda

    adapter = load_adapter(mixed_adapter)
    for method in ("auto", "gram", "qr"):
        options = EngineOptions(device="cpu", method=method)  # type: ignore[arg-type]
        grams_map: dict[str, Grams] = {}
        grams_cpu: dict[str, Grams] = {}
        via_map = _spectra_cuda(adapter, options=options, progress=None, warn=None, grams=grams_map)
        direct = _spectra_cpu(adapter, method=method, progress=None, grams=grams_cpu)  # type: ignore[arg-type]
        assert set(via_map) == set(direct)
        assert set(grams_map) == set(grams_cpu)
        for name, g in grams_cpu.items():
            assert np.allclose(grams_map[name].b, g.b, rtol=1e-12, atol=0)
            assert np.allclose(grams_map[name].a, g.a, rtol=1e-12, atol=0)
        for name, sigma in direct.items():
            top = max(float(sigma[0]), 1e-300)
            assert float(np.abs(via_map[name] - sigma).max()) / top <= 1e-10


def test_gpu_out_of_memory_moves_the_rest_to_the_cpu_path(
    mixed_adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lora_audit.engine.batches as batches
    import lora_audit.engine.spectra as engine

    adapter = load_adapter(mixed_adapter)
    real = batches._load_chunk
    calls: list[str] = []

    def always_oom(adapter_, chunk, *, device):  # type: ignore[no-untyped-def]
        calls.append(device.type)
        if len(calls) == 1:  # the first group's first chunk: one layer, so give up on the "GPU"
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(adapter_, chunk, device=device)

    monkeypatch.setattr(batches, "_load_chunk", always_oom)
    warnings: list[str] = []
    got = engine._spectra_cuda(
        adapter, options=EngineOptions(device="cpu"), progress=None, warn=warnings.append
    )
    assert len(warnings) == 1 and "continuing on the CPU" in warnings[0]
    expected = engine._spectra_cpu(adapter, method="auto", progress=None)
    assert set(got) == set(expected)
    for name, sigma in expected.items():
        assert float(np.abs(got[name] - sigma).max()) <= 1e-10 * max(float(sigma[0]), 1e-300)
    assert len(batches.group_layers(adapter.layers)[0]) == 1
    assert len(calls) == 2  # the retry on the CPU; later groups never went through map_groups


def test_out_of_memory_halves_what_was_tried(
    mixed_adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lora_audit.engine.batches as engine

    adapter = load_adapter(mixed_adapter)
    real = engine._load_chunk
    sizes: list[int] = []

    def oom_above_one(adapter_, chunk, *, device):  # type: ignore[no-untyped-def]
        sizes.append(len(chunk))
        if len(chunk) > 1:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(adapter_, chunk, device=device)

    monkeypatch.setattr(engine, "_load_chunk", oom_above_one)
    result = map_groups(
        adapter, lambda ls, b, a: [0] * len(ls), options=EngineOptions(device="cpu")
    )
    assert set(result) == {layer.name for layer in adapter.layers}
    # each two-layer group: one failed try of 2, then two chunks of 1 (no retries of 2)
    assert sizes.count(2) == 2 and sizes.count(1) == len(adapter.layers)


@pytest.mark.parametrize("method", ["auto", "gram", "qr"])
def test_analyse_keeps_the_grams_it_used(mixed_adapter: Path, method: str) -> None:
    from lora_audit.engine.spectra import analyse

    adapter = load_adapter(mixed_adapter)
    options = EngineOptions(device="cpu", method=method)  # type: ignore[arg-type]
    analysis = analyse(adapter, options=options, keep_grams=True)
    assert analysis.sigmas.keys() == spectra(adapter, options=options).keys()
    assert analyse(adapter, options=options).grams == {}  # only on request
    expected = set() if method == "qr" else {layer.name for layer in adapter.layers}
    assert set(analysis.grams) == expected
    for layer in adapter.layers:
        if layer.name in analysis.grams:
            b, a = adapter.load_factors(layer)
            grams = analysis.grams[layer.name]
            assert np.allclose(grams.b, b.T @ b, rtol=1e-13, atol=0)
            assert np.allclose(grams.a, a @ a.T, rtol=1e-13, atol=0)
