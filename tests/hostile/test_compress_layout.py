"""``compress`` keeps each input tensor's dtype and layout (issue 17, section 5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hostile.builders import tensor, write_st
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.formats.safetensors_io import SafetensorsSource, encode_floats, read_header

runner = CliRunner()


def _values(source: SafetensorsSource, key: str) -> np.ndarray:
    raw = source.raw(key)
    data = np.frombuffer(bytes(raw.data), dtype={"F32": "<f4", "BF16": "<u2"}[raw.dtype])
    if raw.dtype == "BF16":
        data = (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float64).reshape(raw.shape)


def test_mixed_dtypes_and_a_5d_b_factor_keep_their_dtype_and_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    b64 = rng.standard_normal((8, 4, 1, 1, 1))
    b = encode_floats(b64, "BF16")
    a = tensor((4, 6), dtype="F32", seed=1)
    adapter = tmp_path / "a"
    write_st(
        adapter / "adapter_model.safetensors",
        {"base_model.model.x.lora_B.weight": b, "base_model.model.x.lora_A.weight": a},
    )
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 4}))
    out = tmp_path / "out"
    result = runner.invoke(app, ["compress", str(adapter), "-o", str(out), "--rank", "2"])
    assert result.exit_code == 0, result.stderr
    header = read_header(out / "adapter_model.safetensors")
    new_b = header.tensors["base_model.model.x.lora_B.weight"]
    new_a = header.tensors["base_model.model.x.lora_A.weight"]
    assert (new_b.dtype, new_b.shape) == ("BF16", (8, 2, 1, 1, 1))
    assert (new_a.dtype, new_a.shape) == ("F32", (2, 6))
    # the written factors are the rank-2 truncation of ΔW (BF16 rounding of B aside)
    source = SafetensorsSource(out / "adapter_model.safetensors", header)
    old = SafetensorsSource(
        adapter / "adapter_model.safetensors", read_header(adapter / "adapter_model.safetensors")
    )
    dw = _values(old, "base_model.model.x.lora_B.weight").reshape(8, 4) @ _values(
        old, "base_model.model.x.lora_A.weight"
    )
    u, s, vt = np.linalg.svd(dw)
    truth = (u[:, :2] * s[:2]) @ vt[:2]
    got = _values(source, "base_model.model.x.lora_B.weight").reshape(8, 2) @ _values(
        source, "base_model.model.x.lora_A.weight"
    )
    config = json.loads((out / "adapter_config.json").read_text())
    scale = config.get("alpha_pattern", {}).get("x", config["lora_alpha"]) / 2
    assert np.linalg.norm(scale * got - truth) <= 2e-2 * np.linalg.norm(truth)
