"""PEFT LoRA on nn.MultiheadAttention and on a grouped convolution, built with PEFT itself.

References: PEFT's own ``get_delta_weight`` (MultiheadAttention) and the layer's ``forward``
(grouped convolution, which PEFT cannot merge), in float64.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import lora_audit
from lora_audit.cli import app
from lora_audit.errors import InputError
from lora_audit.formats import load_adapter

peft = pytest.importorskip("peft")
pytestmark = [
    pytest.mark.filterwarnings("ignore:LoRA adapter added to ConvNd:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*grouped convolution:lora_audit.errors.LoraAuditWarning"),
]


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        self.conv = torch.nn.Conv2d(4, 6, 3, groups=2, padding=1)
        self.lin = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _save(out: Path, **lora: object) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    base = _Model()
    save_file(
        {k: v.contiguous() for k, v in base.state_dict().items()},
        str(out.parent / "base.safetensors"),
    )
    config = peft.LoraConfig(init_lora_weights=False, **lora)  # type: ignore[arg-type]
    model = peft.get_peft_model(base, config)
    model.save_pretrained(out)
    return model.double(), out


def _sigma(report: lora_audit.InspectReport) -> dict[str, np.ndarray]:
    return {x.name: np.array(x.singular_values) for x in report.layers}


def _close(got: np.ndarray, dense: np.ndarray) -> None:
    want = np.linalg.svd(dense, compute_uv=False)[: len(got)]
    assert np.abs(got - want).max() <= 1e-12 * want[0], (got, want)


def test_multihead_attention_is_read_exactly(tmp_path: Path) -> None:
    """Before (0.2.0): refused as a MoE target_parameters LoRA "without adapter_config.json"."""
    model, d = _save(
        tmp_path / "mha",
        r=2,
        lora_alpha=4,
        rank_pattern={"mha": 4},
        alpha_pattern={"mha": 12},
        target_modules=["mha", "lin"],
    )
    mha = model.base_model.model.mha
    in_proj = mha.get_delta_weight("default").detach().numpy()  # PEFT's own reference, float64
    out_proj = mha.base_layer.out_proj.get_delta_weight("default").detach().numpy()
    assert in_proj.shape == (24, 8) and out_proj.shape == (8, 8)
    adapter = load_adapter(d)
    layers = {x.name: x for x in adapter.layers}
    assert set(layers) == {"mha", "mha.out_proj", "lin"}
    # out_proj is built with the attention module's r and alpha (rank_pattern/alpha_pattern "mha")
    assert layers["mha"].scale == layers["mha.out_proj"].scale == 3.0 == mha.scaling["default"]
    assert layers["mha.out_proj"].rank == 4 and layers["lin"].scale == 2.0
    sigma = _sigma(lora_audit.inspect(d, device="cpu"))
    _close(sigma["mha"], in_proj)
    _close(sigma["mha.out_proj"], out_proj)


def test_multihead_attention_against_the_base_and_refused_by_compress(tmp_path: Path) -> None:
    _, d = _save(tmp_path / "mha", r=2, lora_alpha=4, target_modules=["mha"])
    run = CliRunner().invoke(
        app,
        [
            "inspect",
            str(d),
            "--base",
            str(tmp_path / "base.safetensors"),
            "-f",
            "json",
            "--device",
            "cpu",
        ],
    )
    assert run.exit_code == 0, run.stderr
    keys = {x["name"]: x["base"]["key"] for x in json.loads(run.stdout)["layers"]}
    assert keys == {"mha": "mha.in_proj_weight", "mha.out_proj": "mha.out_proj.weight"}
    with pytest.raises(InputError, match=r"'mha'.*nn\.MultiheadAttention.*one r"):
        lora_audit.compress(d, rank=1, dry_run=True)
    merged = CliRunner().invoke(
        app, ["merge", str(d), str(d), "-o", str(tmp_path / "m"), "--concat"]
    )
    assert merged.exit_code == 3 and "nn.MultiheadAttention" in merged.stderr


def _forward_kernel(layer: torch.nn.Module) -> np.ndarray:
    """ΔW of a 3×3, padding-1 conv LoRA as the layer's forward applies it, probed by impulses."""
    out_c, in_c = layer.base_layer.out_channels, layer.base_layer.in_channels
    impulses = torch.eye(in_c * 9, dtype=torch.float64).reshape(in_c * 9, in_c, 3, 3)
    with torch.no_grad():
        delta = layer(impulses) - layer.base_layer(impulses)  # (in·9, out, 3, 3)
    return delta[:, :, 1, 1].T.reshape(out_c, in_c * 9).numpy()  # the centre sees the kernel


def test_grouped_convolution_is_audited_as_its_forward(tmp_path: Path) -> None:
    """Before (0.2.0): refused as a "rank mismatch"."""
    model, d = _save(tmp_path / "g", r=4, lora_alpha=8, target_modules=["conv"])
    conv = model.base_model.model.conv
    assert tuple(conv.lora_B["default"].weight.shape) == (6, 2, 1, 1)  # grouped lora_B
    with pytest.raises(NotImplementedError):
        conv.merge()  # PEFT itself cannot merge it
    reference = _forward_kernel(conv)
    (layer,) = load_adapter(d).layers
    assert layer.conv_groups == 2 and layer.scale == 2.0 and layer.params == 4 * 36 + 6 * 2
    adapter = load_adapter(d)
    b, a = adapter.load_factors(layer)
    assert np.abs(layer.scale * b @ a - reference).max() <= 1e-12 * np.abs(reference).max()
    report = lora_audit.inspect(d, device="cpu")
    _close(np.array(report.layers[0].singular_values), reference)
    assert any("grouped convolution" in w for w in report.warnings)


def test_grouped_convolution_is_refused_by_name_where_it_cannot_be_written(tmp_path: Path) -> None:
    _, d = _save(tmp_path / "g", r=4, lora_alpha=8, target_modules=["conv"])
    with pytest.raises(InputError, match=r"'conv'.*grouped convolution"):
        lora_audit.compress(d, rank=1, dry_run=True)
    with pytest.raises(InputError, match=r"'conv'.*grouped convolution.*groups=2"):
        lora_audit.inspect(d, base=tmp_path / "base.safetensors", device="cpu")
    merged = CliRunner().invoke(
        app, ["merge", str(d), str(d), "-o", str(tmp_path / "m"), "--concat"]
    )
    assert merged.exit_code == 3 and "grouped convolution" in merged.stderr
