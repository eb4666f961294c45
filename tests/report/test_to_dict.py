"""``to_dict`` equals ``dataclasses.asdict`` plus the JSON conversions, without its deep copy."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import lora_audit
from lora_audit.report import to_dict
from lora_audit.report.common import OMIT_WHEN_EMPTY

SAMPLES = Path(__file__).resolve().parents[2] / "sample_adapters"


def _reference(report: Any) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    data: dict[str, Any] = plain(dataclasses.asdict(report))
    for f in dataclasses.fields(report):
        if f.metadata.get(OMIT_WHEN_EMPTY) and not data.get(f.name):
            data.pop(f.name)
    return data


def test_to_dict_equals_asdict_for_every_report_kind() -> None:
    r16, r4 = SAMPLES / "minilm-r16", SAMPLES / "minilm-r4-bf16"
    reports = [
        lora_audit.inspect(r16),
        lora_audit.inspect_many([r16, r4]),
        lora_audit.check([r16, r4], max_waste=0.1),
    ]
    for report in reports:
        assert to_dict(report) == _reference(report)
    nan = dataclasses.replace(reports[0].layers[0], stable_rank=float("nan"))
    assert to_dict(nan)["stable_rank"] is None
