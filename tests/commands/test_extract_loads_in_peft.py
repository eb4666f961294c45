"""extract → PeftModel.from_pretrained: each layer's delta is the Eckart–Young optimum of ΔW.

PEFT itself is the judge: a real full fine-tune of a small BERT (tests/support/tiny_finetune.py),
its optimal LoRA extracted by lora-audit, loaded by PEFT onto a fresh base; every layer's
``get_delta_weight`` must equal the rank-k truncation of the dense float64 SVD of ΔW, and at
full rank the merged model must be the fine-tuned one (norms, embeddings and biases carried).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from lora_audit.commands.extract import ExtractOptions, extract
from lora_audit.errors import UsageError

pytestmark = pytest.mark.peft
torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from tiny_finetune import finetune_base, full_finetune  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return full_finetune(tmp_path_factory.mktemp("ft"))


def _params(path: Path) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().double()
        for k, v in transformers.BertModel.from_pretrained(path).named_parameters()
    }


def test_peft_delta_is_the_rank_k_optimum(pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, tuned = pair
    out = tmp_path / "extracted"
    report = extract(base, tuned, output=out, options=ExtractOptions(energy=0.9))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["rank_pattern"] == report.rank_pattern and config["lora_alpha"] == config["r"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.PeftModel.from_pretrained(finetune_base(), str(out))
    w0, w1 = _params(base), _params(tuned)
    by_name = {x.name: x for x in report.layers}
    seen = 0
    for name, module in model.named_modules():
        if not (hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})):
            continue
        short = name.removeprefix("base_model.model.")
        delta = (w1[f"{short}.weight"] - w0[f"{short}.weight"]).numpy()
        u, s, vh = np.linalg.svd(delta)
        c = np.cumsum(s**2) / (s**2).sum()
        k = int(np.argmax(c >= 0.9)) + 1
        layer = by_name[short]
        assert layer.rank == k == module.r["default"]
        optimum = (u[:, :k] * s[:k]) @ vh[:k]
        got = module.get_delta_weight("default").detach().double().numpy()
        assert np.linalg.norm(got - optimum) <= 1e-6 * np.linalg.norm(delta)
        assert layer.optimal_error == pytest.approx(np.sqrt(1 - c[k - 1]), rel=1e-6)
        assert layer.error == pytest.approx(layer.optimal_error, rel=1e-5)
        seen += 1
    assert seen == len(report.layers) == 6  # pooler.dense did not change: not a target
    assert report.unchanged == ("pooler.dense",)


def test_full_rank_rebuilds_the_fine_tuned_model(pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, tuned = pair
    out = tmp_path / "full"
    report = extract(base, tuned, output=out, options=ExtractOptions(rank=1000))
    hows = {c.key: c.how for c in report.carried}
    assert hows["embeddings.LayerNorm.weight"] == "modules_to_save"
    assert hows["embeddings.word_embeddings.weight"] == "modules_to_save"
    assert hows["encoder.layer.0.attention.self.query.bias"] == "lora_bias"
    assert not [c for c in report.carried if c.how == "not-carried"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = peft.PeftModel.from_pretrained(finetune_base(), str(out)).merge_and_unload()
    w1 = _params(tuned)
    for name, value in merged.named_parameters():
        np.testing.assert_allclose(value.detach().double(), w1[name], atol=1e-5, err_msg=name)


def test_refusals(pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, tuned = pair
    with pytest.raises(UsageError, match="exactly one of --energy and --rank"):
        extract(base, tuned, output=tmp_path / "x", options=ExtractOptions())
    with pytest.raises(UsageError, match="would overwrite the input"):
        extract(base, tuned, output=tuned, options=ExtractOptions(rank=2))
    assert (tuned / "model.safetensors").is_file()
    out = tmp_path / "once"
    extract(base, tuned, output=out, options=ExtractOptions(rank=2))
    with pytest.raises(UsageError, match="already exists"):
        extract(base, tuned, output=out, options=ExtractOptions(rank=2))
