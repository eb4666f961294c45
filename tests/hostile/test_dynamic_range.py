"""Float64 factors with a huge dynamic range but a moderate product (issue 17, section 5).

``B·1e-200`` and ``A·1e200`` are finite and so is ``B·A``, but ``AAᵀ`` overflows and
``BᵀB`` underflows in float64; the factors are balanced by a power of two (exact) first.
The reference is the dense float64 SVD of the stored ``B @ A``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hostile.builders import write_st
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.engine.host_buffers import balance
from lora_audit.formats.safetensors_io import SafetensorsSource, StoredTensor, read_header

runner = CliRunner()
KEYS = ("base_model.model.x.lora_B.weight", "base_model.model.x.lora_A.weight")


def _adapter(tmp_path: Path, *, scale_b: float, scale_a: float) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(3)
    b = np.ascontiguousarray(rng.standard_normal((8, 4)) * scale_b)
    a = np.ascontiguousarray(rng.standard_normal((4, 6)) * scale_a)
    directory = tmp_path / "a"
    write_st(
        directory / "adapter_model.safetensors",
        {KEYS[0]: StoredTensor("F64", b.shape, b), KEYS[1]: StoredTensor("F64", a.shape, a)},
    )
    (directory / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 4}))
    return directory, b @ a


@pytest.mark.parametrize(("scale_b", "scale_a"), [(1e-200, 1e200), (1e250, 1e-250), (1e-300, 1e-5)])
def test_spectrum_of_a_huge_dynamic_range_matches_the_dense_svd(
    tmp_path: Path, scale_b: float, scale_a: float
) -> None:
    directory, dense = _adapter(tmp_path, scale_b=scale_b, scale_a=scale_a)
    result = runner.invoke(app, ["inspect", str(directory), "-f", "json"])
    assert result.exit_code == 0, result.stderr
    sigma = np.array(json.loads(result.stdout)["layers"][0]["singular_values"])
    truth = np.linalg.svd(dense, compute_uv=False)[:4]
    np.testing.assert_allclose(sigma, truth, rtol=1e-6, atol=1e-9 * truth[0])


def test_compress_of_a_huge_dynamic_range_is_the_truncation(tmp_path: Path) -> None:
    directory, dense = _adapter(tmp_path, scale_b=1e-200, scale_a=1e200)
    out = tmp_path / "out"
    result = runner.invoke(app, ["compress", str(directory), "-o", str(out), "--rank", "2"])
    assert result.exit_code == 0, result.stderr
    header = read_header(out / "adapter_model.safetensors")
    source = SafetensorsSource(out / "adapter_model.safetensors", header)
    b, a = (
        np.frombuffer(bytes(source.raw(k).data), "<f8").reshape(source.raw(k).shape) for k in KEYS
    )
    config = json.loads((out / "adapter_config.json").read_text())
    alpha = next(iter(config.get("alpha_pattern", {}).values()), config["lora_alpha"])
    rank = next(iter(config.get("rank_pattern", {}).values()), config["r"])
    u, s, vt = np.linalg.svd(dense)
    truth = (u[:, :2] * s[:2]) @ vt[:2]
    np.testing.assert_allclose(alpha / rank * (b @ a), truth, rtol=0, atol=1e-9 * s[0])


def test_balance_is_exact_and_leaves_ordinary_factors_alone() -> None:
    rng = np.random.default_rng(0)
    b, a = rng.standard_normal((5, 3)) * 1e-250, rng.standard_normal((3, 4)) * 1e250
    before = b @ a
    balance(b, a)
    assert np.array_equal(b @ a, before) or np.allclose(b @ a, before, rtol=1e-15)
    assert 1e-10 < np.abs(b).max() < 1e10 and 1e-10 < np.abs(a).max() < 1e10
    c, d = rng.standard_normal((5, 3)), rng.standard_normal((3, 4))
    c0, d0 = c.copy(), d.copy()
    balance(c, d)
    assert np.array_equal(c, c0) and np.array_equal(d, d0)
