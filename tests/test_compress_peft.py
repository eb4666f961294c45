"""compress → PeftModel.from_pretrained rebuilds exactly the optimal rank-k truncation.

PEFT itself is the judge: a tiny BERT built from a config (nothing downloaded), LoRA layers
created and saved by PEFT, compressed by lora-audit, loaded back by PEFT; every layer's
``get_delta_weight`` must equal the best rank-k approximation of the original delta
(dense float64 SVD) to ≤ 1e-5 relative.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lora_audit.compress import CompressOptions, compress_adapter
from lora_audit.formats import load_adapter
from lora_audit.report import CompressReport
from lora_audit.selection import RankRule

pytestmark = pytest.mark.peft
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

CONFIGS: dict[str, dict[str, Any]] = {
    "patterns": dict(
        r=8,
        lora_alpha=16,
        target_modules=["query", "value", "dense"],
        rank_pattern={"query": 4, "layer.1.output.dense": 6},
        alpha_pattern={"value": 24},
    ),
    "rslora": dict(r=8, lora_alpha=8, use_rslora=True, target_modules=["query", "key", "dense"]),
}


def tiny_base() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        vocab_size=64,
    )
    return transformers.BertModel(config)


def lora_deltas(model: Any) -> dict[str, np.ndarray]:
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            key = name.removeprefix("base_model.model.")
            out[key] = module.get_delta_weight("default").detach().double().numpy()
    return out


@pytest.fixture(params=sorted(CONFIGS))
def saved(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    torch.manual_seed(1)
    model = peft.get_peft_model(
        tiny_base(), peft.LoraConfig(init_lora_weights=False, **CONFIGS[request.param])
    )
    path = tmp_path / request.param
    model.save_pretrained(str(path))
    return path, lora_deltas(model)


def optimal(delta: np.ndarray, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


def load_back(path: Path) -> dict[str, np.ndarray]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(tiny_base(), str(path))
    problems = [str(w.message) for w in caught if "key" in str(w.message).lower()]
    assert not problems, problems
    return lora_deltas(model)


def run(source: Path, out: Path, rule: RankRule) -> CompressReport:
    options = CompressOptions(rule=rule, output=out)
    return compress_adapter(load_adapter(source), options=options)


@pytest.mark.parametrize(
    "rule",
    [
        RankRule(mode="rank", value=3),
        RankRule(mode="energy", value=0.9),
        RankRule(mode="budget", value=2000),
        RankRule(mode="ratio", value=4),
    ],
    ids=["rank", "energy", "budget", "ratio"],
)
def test_peft_rebuilds_the_optimal_truncation(
    saved: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, rule: RankRule
) -> None:
    source, original = saved
    report = run(source, tmp_path / "out", rule)
    rebuilt = load_back(tmp_path / "out")
    assert set(rebuilt) == set(original)
    by_name = {layer.name: layer for layer in report.layers}
    worst = 0.0
    for name, delta in original.items():
        k = by_name[name].new_rank
        best = optimal(delta, k)
        err = np.linalg.norm(rebuilt[name] - best) / np.linalg.norm(delta)
        worst = max(worst, float(err))
        expected = np.linalg.norm(delta - best) / np.linalg.norm(delta)
        assert by_name[name].relative_error == pytest.approx(expected, abs=1e-6)
    assert worst <= 1e-5, worst
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["use_rslora"] is False
    if rule.mode == "budget":
        assert report.summary.params_after <= rule.value


def test_budget_is_no_worse_than_uniform(
    saved: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    source, original = saved
    uniform = run(source, tmp_path / "u", RankRule(mode="rank", value=2))
    budget = run(
        source, tmp_path / "b", RankRule(mode="budget", value=uniform.summary.params_after)
    )
    assert budget.summary.params_after <= uniform.summary.params_after
    assert budget.summary.relative_error <= uniform.summary.relative_error + 1e-12

    # and PEFT agrees on the errors: Σ‖ΔW − ΔW_k‖² computed from what it loads
    def total_error(path: Path) -> float:
        rebuilt = load_back(path)
        return sum(float(np.linalg.norm(original[n] - rebuilt[n]) ** 2) for n in original)

    assert total_error(tmp_path / "b") <= total_error(tmp_path / "u") * (1 + 1e-9)


def test_untouched_layers_keep_their_bits(
    saved: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    from safetensors import safe_open

    source, original = saved
    run(source, tmp_path / "out", RankRule(mode="rank", value=64))  # nothing shrinks
    rebuilt = load_back(tmp_path / "out")
    for name, delta in original.items():
        assert np.allclose(rebuilt[name], delta, rtol=0, atol=1e-6 * np.abs(delta).max())
    with (
        safe_open(str(source / "adapter_model.safetensors"), "pt") as a,
        safe_open(str(tmp_path / "out" / "adapter_model.safetensors"), "pt") as b,
    ):
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():  # noqa: SIM118 (safe_open has no __iter__)
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
        meta = b.metadata()
    assert meta["lora_audit.method"] == "rank" and len(meta["lora_audit.source_sha256"]) == 64
