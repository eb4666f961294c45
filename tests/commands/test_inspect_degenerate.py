"""Degenerate adapters get the right single message (issue #22, part 4).

The adapters are written by PEFT itself (``get_peft_model`` + ``save_pretrained``) on a tiny
BERT built from a config, nothing downloaded: one saved before training (every B = 0), and
one with a ``rank_pattern`` and an ``alpha_pattern``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLES

from lora_audit.commands.check import run_check
from lora_audit.commands.compress import CompressOptions, compress_adapter
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.decisions.check_rules import Policy
from lora_audit.decisions.compress_ranks import RankRule
from lora_audit.engine.device import EngineOptions
from lora_audit.errors import InputError
from lora_audit.formats import load_adapter
from lora_audit.formats.patterns import match_pattern
from lora_audit.render.markdown import render_inspect as render_markdown
from lora_audit.render.table import render_inspect
from lora_audit.report import InspectReport

pytestmark = pytest.mark.peft
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

PATTERNS: dict[str, Any] = dict(
    r=8,
    lora_alpha=16,
    target_modules=["query", "value", "dense"],
    rank_pattern={"query": 4, "layer.1.output.dense": 32},
    alpha_pattern={"value": 24},
)


def save(path: Path, **config: Any) -> Path:
    torch.manual_seed(0)
    base = transformers.BertModel(
        transformers.BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            vocab_size=64,
        )
    )
    peft.get_peft_model(base, peft.LoraConfig(**config)).save_pretrained(str(path))
    return path


def audit(path: Path) -> InspectReport:
    return inspect_adapter(load_adapter(path), options=AuditOptions())


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("untrained") / "adapter"
    return save(folder, r=8, lora_alpha=16, target_modules=["query", "value", "dense"])


@pytest.fixture(scope="module")
def patterned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("patterned") / "adapter"
    return flatten(save(folder, init_lora_weights=False, **PATTERNS))  # random B: "trained"


def flatten(folder: Path) -> Path:
    """Make every layer's ΔW have r − 1 equal singular values and a last one of 0.05
    (orthonormal A and B): its last rank is waste at τ = 0.99, yet the advice rule (k@0.9,
    rounded up to a power of two) keeps every rank it has: the advice is its configuration."""
    from safetensors.torch import load_file, save_file

    file = folder / "adapter_model.safetensors"
    tensors = load_file(str(file))
    for key in [k for k in tensors if "lora_A" in k]:
        a, b = tensors[key], tensors[key.replace("lora_A", "lora_B")]
        generator = torch.Generator().manual_seed(len(key))
        qa = torch.linalg.qr(torch.randn(a.shape[1], a.shape[0], generator=generator))[0]
        qb = torch.linalg.qr(torch.randn(b.shape[0], b.shape[1], generator=generator))[0]
        tensors[key] = qa.T.contiguous()
        qb[:, -1] *= 0.05
        tensors[key.replace("lora_A", "lora_B")] = qb.contiguous()
    save_file(tensors, str(file), metadata={"format": "pt"})
    return folder


def test_an_untrained_adapter_is_called_untrained_once(untrained: Path) -> None:
    report = audit(untrained)
    s = report.summary
    assert s.advice_verdict == "untrained"
    assert len(s.advice) == 1 and s.advice[0].startswith("Untrained adapter")
    assert s.compress_command is None and s.advice_reason == ""
    for text in (render_inspect(report, width=100), render_markdown(report)):
        assert text.count("Untrained adapter") == 1
        assert "Truncate" not in text and "100.0%" not in text
        assert "r=1" not in text and "Retrain at" not in text
        assert "lora-audit compress" not in text
    assert s.advice_basis is not None and s.advice_basis.rule  # the basis is still named


def test_check_gives_an_untrained_adapter_one_finding(untrained: Path) -> None:
    report = run_check([untrained], policy=Policy(), engine=EngineOptions())
    assert [(f.rule, f.layer) for f in report.findings] == [("min-rank-used", None)]
    assert "untrained" in report.findings[0].message


def test_compress_refuses_an_untrained_adapter(untrained: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    options = CompressOptions(rule=RankRule(mode="energy", value=0.99), output=out)
    with pytest.raises(InputError, match=r"untrained adapter.*nothing to keep"):
        compress_adapter(load_adapter(untrained), options=options)
    assert not out.exists()  # no zero-filled adapter


def test_rank_pattern_adapter_shows_its_real_ranks(patterned: Path) -> None:
    report = audit(patterned)
    assert report.summary.layer_ranks == (4, 8, 32)
    assert "peft, r=8, rank_pattern 4–32, lora_alpha=16" in render_inspect(report, width=120)
    assert "r=8, rank_pattern 4–32" in render_markdown(report)
    sample = audit(SAMPLES / "minilm-r8-rslora-patterns")
    assert "r=8, rank_pattern 4–16" in render_inspect(sample, width=120)


def test_advice_equal_to_the_configuration_is_not_a_change(patterned: Path) -> None:
    report = audit(patterned)
    s = report.summary
    assert s.advice_verdict == "keep" and s.params_retrain == s.params
    text = render_inspect(report, width=200)
    assert f"instead of {s.params:,}" not in text
    assert "keep the ranks you trained" in text
    assert "Retrain at" not in text


def test_advice_keeps_each_layers_alpha_and_gives_lora_alpha(patterned: Path) -> None:
    adapter = load_adapter(patterned)
    s = inspect_adapter(adapter, options=AuditOptions()).summary
    assert s.lora_alpha == 16 and s.network_alpha is None
    for layer in adapter.layers:  # the advised rank and alpha give the scale it was trained at
        rank = match_pattern(s.rank_pattern, layer.name) or s.recommended_rank
        alpha = match_pattern(s.alpha_pattern, layer.name) or s.lora_alpha
        assert alpha / rank == pytest.approx(layer.scale), layer.name


def test_rslora_sample_keeps_its_alpha_pattern() -> None:
    adapter = load_adapter(SAMPLES / "minilm-r8-rslora-patterns")
    s = inspect_adapter(adapter, options=AuditOptions()).summary
    assert s.lora_alpha is not None  # one ratio for most layers, alpha_pattern for the rest
    assert s.alpha_pattern
    for layer in adapter.layers:
        rank = match_pattern(s.rank_pattern, layer.name) or s.recommended_rank
        alpha = match_pattern(s.alpha_pattern, layer.name) or s.lora_alpha
        assert alpha / math.sqrt(rank) == pytest.approx(layer.scale, rel=1e-6), layer.name


def test_kohya_advice_names_network_alpha() -> None:
    report = audit(SAMPLES / "sd" / "kohya-lora.safetensors")
    s = report.summary
    assert s.network_alpha is not None and s.network_alpha == s.lora_alpha
    assert any(f"network_alpha={s.network_alpha:g}" in line for line in s.advice)


def test_check_does_not_advise_retraining_at_the_ranks_trained(patterned: Path) -> None:
    report = run_check([patterned], policy=Policy(max_waste=0.01), engine=EngineOptions())
    waste = [f for f in report.findings if f.rule == "max-waste"]
    assert len(waste) == 1 and "retrain at" not in waste[0].fix
    assert "lora-audit compress" in waste[0].fix
