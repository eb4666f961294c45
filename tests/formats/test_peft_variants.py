"""PEFT LoHa, LoKr and AdaLoRA adapters written by PEFT itself, against its get_delta_weight."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_audit.engine.device import EngineOptions
from lora_audit.engine.spectra import spectra
from lora_audit.errors import InputError
from lora_audit.formats import load_adapter

peft = pytest.importorskip("peft")


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = torch.nn.Linear(12, 10)
        self.v = torch.nn.Linear(12, 16)
        self.c = torch.nn.Conv2d(3, 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(x) + self.q(x)[..., :1]


def _save(config: object, out: Path, *, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = peft.get_peft_model(Tiny(), config)
    for name, p in model.named_parameters():  # AdaLoRA starts with E = 0: make it non-trivial
        if "lora_E" in name:
            p.data.normal_()
    model.save_pretrained(str(out))
    return out


def _reference(directory: Path) -> dict[str, np.ndarray]:
    """σ of PEFT's own get_delta_weight for each adapted module, in float64."""
    loaded = peft.PeftModel.from_pretrained(Tiny(), str(directory)).double()
    out = {}
    for name, module in loaded.base_model.model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "scaling", {}):
            dw = (
                module.get_delta_weight("default")
                .detach()
                .double()
                .reshape(module.get_base_layer().weight.shape[0], -1)
            )
            out[name] = np.linalg.svd(dw.numpy(), compute_uv=False)
    return out


def _assert_matches(adapter_path: Path, reference: dict[str, np.ndarray], **kw: object) -> None:
    adapter = load_adapter(adapter_path, **kw)  # type: ignore[arg-type]
    got = spectra(adapter, options=EngineOptions(device="cpu"))
    assert set(got) <= set(reference)
    for name in set(reference) - set(got):  # only a layer pruned to rank 0 may be left out
        assert not reference[name].any(), name
    for name, want in reference.items():
        if name not in got:
            continue
        sigma = np.zeros_like(want)
        k = min(len(want), len(got[name]))
        sigma[:k] = got[name][:k]
        assert np.allclose(sigma, want, rtol=1e-6, atol=1e-6 * want[0]), name


def _alone(directory: Path, tmp_path: Path) -> Path:
    """The tensor file by itself, without its adapter_config.json."""
    single = tmp_path / "alone" / "weights.safetensors"
    single.parent.mkdir()
    shutil.copy(directory / "adapter_model.safetensors", single)
    return single


@pytest.mark.parametrize("effective_conv2d", [False, True])
def test_loha_directory_uses_peft_scale_and_patterns(
    tmp_path: Path, effective_conv2d: bool
) -> None:
    config = peft.LoHaConfig(
        r=3,
        alpha=5,
        target_modules=["q", "v", "c"],
        rank_pattern={"v": 2},
        alpha_pattern={"q": 7},
        init_weights=False,
        use_effective_conv2d=effective_conv2d,  # conv: Tucker cores hada_t1/t2
    )
    directory = _save(config, tmp_path / "loha")
    _assert_matches(directory, _reference(directory))
    adapter = load_adapter(directory)
    assert adapter.format == "peft-loha" and not adapter.warnings
    by_name = {layer.name: layer for layer in adapter.layers}
    assert set(by_name) == {"q", "v", "c"}  # no base_model.model. prefix
    assert by_name["q"].scale == pytest.approx(7 / 3) and by_name["v"].scale == pytest.approx(2.5)
    assert {layer.scale_source for layer in adapter.layers} == {"config"}


def test_loha_file_alone_warns_and_takes_alpha(tmp_path: Path) -> None:
    directory = _save(peft.LoHaConfig(r=4, alpha=4, target_modules=["q", "v"]), tmp_path / "d")
    single = _alone(directory, tmp_path)
    adapter = load_adapter(single)
    assert adapter.format == "peft-loha"
    assert any("assuming scale 1" in w for w in adapter.warnings)
    assert {layer.scale_source for layer in adapter.layers} == {"assumed"}
    assert all(not layer.name.startswith("base_model") for layer in adapter.layers)
    _assert_matches(single, _reference(directory), alpha=4.0)  # alpha/r = 1 here by design
    with_alpha = load_adapter(single, alpha=8.0)
    assert {layer.scale for layer in with_alpha.layers} == {2.0}
    assert {layer.scale_source for layer in with_alpha.layers} == {"option"}


@pytest.mark.parametrize(("decompose_both", "effective_conv2d"), [(False, False), (True, True)])
def test_lokr_directory_matches_peft(
    tmp_path: Path, decompose_both: bool, effective_conv2d: bool
) -> None:
    # r = 2: q gets a low-rank w2, v and the conv full factors; PEFT scales all by alpha/r
    config = peft.LoKrConfig(
        r=2,
        alpha=5,
        target_modules=["q", "v", "c"],
        decompose_both=decompose_both,
        use_effective_conv2d=effective_conv2d,
        init_weights=False,
    )
    directory = _save(config, tmp_path / "lokr")
    _assert_matches(directory, _reference(directory))
    adapter = load_adapter(directory)
    assert adapter.format == "peft-lokr"
    assert {layer.scale for layer in adapter.layers} == {2.5}
    alone = load_adapter(_alone(directory, tmp_path), alpha=5.0)
    full = [x for x in alone.layers if x.scale_source == "assumed"]  # r is only in the config
    assert full and any("two full factors" in w for w in alone.warnings)


def test_lokr_from_diffusers_style_metadata(tmp_path: Path) -> None:
    # diffusers' save_lora_adapter: model-level keys (no prefix), config in the header
    directory = _save(
        peft.LoKrConfig(r=2, alpha=3, target_modules=["q"], init_weights=False), tmp_path / "d"
    )
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    raw = json.loads((directory / "adapter_config.json").read_text())
    single = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(
        {k.removeprefix("base_model.model."): v for k, v in tensors.items()},
        str(single),
        metadata={"format": "pt", "lora_adapter_metadata": json.dumps(raw)},
    )
    adapter = load_adapter(single)
    assert adapter.format == "peft-lokr" and not adapter.warnings
    assert {layer.scale_source for layer in adapter.layers} == {"metadata"}
    _assert_matches(single, _reference(directory))


def _adalora(tmp_path: Path, *, prune: bool) -> Path:
    torch.manual_seed(0)
    config = peft.AdaLoraConfig(
        init_r=4,
        target_r=2,
        lora_alpha=6,
        target_modules=["q", "v"],
        total_step=20,
        tinit=2,
        tfinal=5,
        deltaT=1,
    )
    model = peft.get_peft_model(Tiny(), config)
    for name, p in model.named_parameters():
        if "lora_E" in name or "lora_B" in name:
            p.data.normal_()
    if prune:  # PEFT's own rank allocation, through a few training steps
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(32, 12), torch.randn(32, 16)
        for step in range(20):
            (model(x) - y).pow(2).mean().backward()
            opt.step()
            model.base_model.update_and_allocate(step)
            opt.zero_grad()
    out = tmp_path / ("pruned" if prune else "full")
    model.save_pretrained(str(out))
    return out


@pytest.mark.parametrize("prune", [False, True])
def test_adalora_directory_matches_svdlinear(tmp_path: Path, prune: bool) -> None:
    directory = _adalora(tmp_path, prune=prune)
    adapter = load_adapter(directory)
    assert adapter.format == "peft-adalora"
    if prune:
        assert json.loads((directory / "adapter_config.json").read_text())["rank_pattern"]
        assert sum(layer.rank for layer in adapter.layers) < 2 * 4
    scales = [layer.scale for layer in adapter.layers]
    assert scales == pytest.approx([6 / (4 + 1e-5)] * len(scales))
    _assert_matches(directory, _reference(directory))


def test_adalora_file_alone_needs_alpha(tmp_path: Path) -> None:
    directory = _adalora(tmp_path, prune=False)
    single = _alone(directory, tmp_path)
    assert any("assuming scale 1" in w for w in load_adapter(single).warnings)
    adapter = load_adapter(single, alpha=6.0)
    assert adapter.format == "peft-adalora"
    assert any("init_r is unknown" in w for w in adapter.warnings)
    _assert_matches(single, _reference(directory), alpha=6.0)


def test_adalora_layer_pruned_to_rank_zero_is_reported(tmp_path: Path) -> None:
    directory = _adalora(tmp_path, prune=False)
    path = directory / "adapter_model.safetensors"
    tensors = load_file(str(path))
    for key in list(tensors):
        if key.startswith("base_model.model.q."):  # what PEFT saves for an all-False mask
            tensors[key] = tensors[key][:0] if "lora_B" not in key else tensors[key][:, :0]
    save_file(tensors, str(path), metadata={"format": "pt"})
    adapter = load_adapter(directory)
    assert [layer.name for layer in adapter.layers] == ["v"]
    assert any("pruned 1 layer(s) to rank 0" in w and "q" in w for w in adapter.warnings)


def test_variants_are_not_compressed(tmp_path: Path) -> None:
    from lora_audit.formats.peft_variants import compress_refusal

    directory = _save(peft.LoHaConfig(r=2, alpha=2, target_modules=["q"]), tmp_path / "d")
    refusal = compress_refusal(load_adapter(directory))
    assert refusal is not None and "PEFT LoHa" in str(refusal)


def test_config_that_disagrees_with_the_tensors_is_refused(tmp_path: Path) -> None:
    directory = _save(peft.LoHaConfig(r=2, alpha=2, target_modules=["q"]), tmp_path / "d")
    raw = json.loads((directory / "adapter_config.json").read_text())
    (directory / "adapter_config.json").write_text(json.dumps({**raw, "peft_type": "LORA"}))
    with pytest.raises(InputError, match="LORA but the tensors are LOHA"):
        load_adapter(directory)
    (directory / "adapter_config.json").write_text(json.dumps({**raw, "r": 3}))
    with pytest.raises(InputError, match="config gives r = 3"):
        load_adapter(directory)
