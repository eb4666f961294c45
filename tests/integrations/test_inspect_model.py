"""``lora_audit.inspect_model``: a live PEFT model audited as its saved adapter is.

Tiny models built from configs, trained a few steps so that every B is non-zero, then saved
with PEFT's own ``save_pretrained``: the in-memory report must equal ``lora_audit.inspect`` of
the saved adapter to 1e-10 relative, and reading must change nothing in the model.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from nested import assert_close
from peft import LoraConfig, get_peft_model
from tiny_llama import tiny_llama

import lora_audit
from lora_audit.errors import InputError
from lora_audit.integrations.peft_live import ShardedFactors

pytestmark = pytest.mark.peft

#: Fields that describe the file, not the adapter.
FILE_FIELDS = ("tensor_file", "file_bytes", "metadata", "passthrough_tensors")


def train(model: Any, steps: int = 3, lr: float = 1e-2) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, 64, (4, 16), generator=generator)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def same_report(
    model: Any, saved_dir: Path, adapter_name: str | None = None, *, active: str = "default"
) -> None:
    live = lora_audit.inspect_model(model, adapter_name, path=saved_dir, device="cpu")
    saved = lora_audit.inspect(saved_dir, device="cpu")
    assert live.adapter.tensor_file == f"<in memory: adapter {adapter_name or active!r}>"
    a, b = live.to_dict(), saved.to_dict()
    for report in (a, b):
        for key in FILE_FIELDS:
            report["adapter"].pop(key)
    assert_close(a, b)
    assert all(layer.spectral_norm > 0 for layer in live.layers)


def state_of(model: torch.nn.Module) -> dict[str, Any]:
    return {
        "modes": [m.training for m in model.modules()],
        "params": {
            n: (p.dtype, p.device, p.requires_grad, p.grad is None, p.detach().clone())
            for n, p in model.named_parameters()
        },
    }


def test_trained_lora_with_patterns_equals_inspect_of_save_pretrained(tmp_path: Path) -> None:
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
        rank_pattern={"down_proj": 4},
        alpha_pattern={"v_proj": 3},
        use_rslora=True,
    )
    model = get_peft_model(tiny_llama(), config)
    train(model)
    before = state_of(model)
    model.save_pretrained(tmp_path / "saved")
    same_report(model, tmp_path / "saved")
    after = state_of(model)
    assert before["modes"] == after["modes"]
    for name, (dtype, device, grad_flag, no_grad, value) in before["params"].items():
        now = after["params"][name]
        assert (dtype, device, grad_flag, no_grad) == now[:4], name
        assert torch.equal(value, now[4]), name
    report = lora_audit.inspect_model(model)
    ranks = {layer.name.rsplit(".", 1)[-1]: layer.rank for layer in report.layers}
    assert ranks["down_proj"] == 4 and ranks["q_proj"] == 8
    v = next(layer for layer in report.layers if layer.name.endswith("v_proj"))
    assert v.scale == pytest.approx(3 / math.sqrt(8))
    assert (
        report.summary.compress_command is None or "ADAPTER_DIR" in report.summary.compress_command
    )


def test_eval_mode_bf16_and_untrained_model_are_left_as_they_are(tmp_path: Path) -> None:
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"]))
    model.eval()
    model.to(torch.bfloat16)
    before = state_of(model)
    report = lora_audit.inspect_model(model)
    assert {layer.dtype for layer in report.layers} == {"BF16"}
    assert len(report.summary.untrained_layers) == len(report.layers)  # B = 0 at init
    after = state_of(model)
    assert before["modes"] == after["modes"] and not any(after["modes"])
    assert all(torch.equal(v[4], after["params"][n][4]) for n, v in before["params"].items())


def test_dora_is_reported_like_a_saved_dora_adapter(tmp_path: Path) -> None:
    model = get_peft_model(
        tiny_llama(),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"], use_dora=True),
    )
    train(model, steps=2)
    model.save_pretrained(tmp_path / "dora")
    same_report(model, tmp_path / "dora")
    assert all(layer.dora for layer in lora_audit.inspect_model(model).layers)


def test_several_adapters_the_active_one_or_the_named_one(tmp_path: Path) -> None:
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"]))
    model.add_adapter("second", LoraConfig(r=2, lora_alpha=4, target_modules=["k_proj", "v_proj"]))
    model.set_adapter("second")
    train(model, steps=2)
    model.save_pretrained(tmp_path / "all", selected_adapters=["second"])
    second = tmp_path / "all" / "second"
    same_report(model, second, active="second")
    same_report(model, second, adapter_name="second")
    default = lora_audit.inspect_model(model, "default")
    assert {layer.rank for layer in default.layers} == {4}
    assert default.summary.untrained_layers  # "default" was never trained
    model.base_model.set_adapter(["default", "second"])
    with pytest.raises(InputError, match="2 active LoRA adapters"):
        lora_audit.inspect_model(model)
    with pytest.raises(InputError, match="'third' is not in the model"):
        lora_audit.inspect_model(model, "third")


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(20, 6)
        self.conv = torch.nn.Conv2d(6, 5, 3)
        self.head = torch.nn.Linear(5, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids).permute(0, 3, 1, 2)  # (n, 6, h, w)
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_conv_embedding_and_linear_layers_of_a_custom_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = get_peft_model(
        ConvNet(), LoraConfig(r=3, lora_alpha=5, target_modules=["emb", "conv", "head"])
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(torch.randint(0, 20, (2, 5, 5))).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(tmp_path / "conv")
    same_report(model, tmp_path / "conv")
    kinds = {layer.name: layer.kind for layer in lora_audit.inspect_model(model).layers}
    assert kinds == {"conv": "conv", "emb": "embedding", "head": "linear"}


@pytest.mark.parametrize("gather", [False, True])
@pytest.mark.parametrize(("which", "shape"), [("lora_", r"\[4, 32\]"), ("lora_B", r"\[32, 4\]")])
def test_zero3_placeholders_are_refused_never_read_as_untrained(
    which: str, shape: str, gather: bool
) -> None:
    """All factors partitioned, or only ``lora_B`` (how PEFT #1402 looked: B seemed 0);
    ``gather=True`` gathers FSDP2 DTensors only, never a ZeRO-3 placeholder."""
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"]))
    for name, param in model.named_parameters():
        if which in name:  # what DeepSpeed ZeRO-3 leaves outside a gather
            param.ds_shape = tuple(param.shape)
            param.ds_numel = param.numel()
            param.data = torch.empty(0, dtype=param.dtype)
    with pytest.raises(ShardedFactors, match=rf"ZeRO-3 placeholder.*full shape {shape}"):
        lora_audit.inspect_model(model, gather=gather)


def test_no_lora_modules_is_refused_by_name() -> None:
    with pytest.raises(InputError, match="no PEFT LoRA modules"):
        lora_audit.inspect_model(tiny_llama())


def test_importing_lora_audit_and_its_integrations_stays_torch_free() -> None:
    code = (
        "import sys, lora_audit, lora_audit.integrations.peft_live, "
        "lora_audit.integrations.run_audit, lora_audit.integrations.mlx_lm\n"
        "lora_audit.inspect_model\n"
        "heavy = ('torch', 'transformers', 'peft', 'mlx', 'mlx_lm')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class Grouped(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 1, groups=2)
        self.attn = torch.nn.MultiheadAttention(8, 2)


@pytest.mark.parametrize(
    ("target", "what"),
    [("conv", "grouped convolution"), ("attn", "nn.MultiheadAttention")],
)
def test_layouts_only_the_file_reader_reads_are_refused_by_name(target: str, what: str) -> None:
    model = get_peft_model(Grouped(), LoraConfig(r=2, target_modules=[target]))
    with pytest.raises(InputError, match=f"{what}.*not read in memory"):
        lora_audit.inspect_model(model)
