"""``lora_audit.inspect_full`` and ``lora_audit.extract``: the same pipelines as the commands."""

from __future__ import annotations

from pathlib import Path

import pytest

import lora_audit
from lora_audit.errors import UsageError

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_finetune import full_finetune


def test_inspect_full_and_extract(tmp_path: Path) -> None:
    base, tuned = full_finetune(tmp_path, steps=2)
    report = lora_audit.inspect_full(tuned, base=base, energy=0.9, device="cpu")
    assert report.kind == "inspect-full" and report.to_dict()["settings"]["energy"] == 0.9
    extracted = lora_audit.extract(base, tuned, output=tmp_path / "out", energy=0.9)
    by_name = {x.name: x.energy_rank for x in report.layers if x.energy_rank}
    assert {x.name: x.rank for x in extracted.layers} == by_name
    with pytest.raises(UsageError, match="exactly one"):
        lora_audit.extract(base, tuned, output=tmp_path / "o2")
    assert "extract" in dir(lora_audit) and "inspect_full" in lora_audit.__all__
