"""``inspect`` leads with the gain: wasted parameters, the worst layers, this adapter's command."""

from __future__ import annotations

import shlex

import pytest
from conftest import SAMPLES

from lora_audit.commands.inspect import AuditOptions, compress_command, inspect_adapter
from lora_audit.engine.spectra import EngineOptions
from lora_audit.formats import load_adapter


@pytest.mark.parametrize(
    ("path", "out"),
    [
        ("runs/my adapter", "runs/my adapter-compressed"),
        ("runs/a/", "runs/a-compressed"),
        ("lora.v2/x.safetensors", "lora.v2/x-compressed.safetensors"),
        ("it's; rm -rf ~", "it's; rm -rf ~-compressed"),
    ],
)
def test_the_command_names_this_adapter_shell_quoted(path: str, out: str) -> None:
    words = shlex.split(compress_command(path, energy=0.95))
    assert words == ["lora-audit", "compress", path, "-o", out, "--energy", "0.95"]


def test_the_summary_leads_with_what_can_be_gained() -> None:
    path = SAMPLES / "minilm-r16"
    report = inspect_adapter(
        load_adapter(path), options=AuditOptions(engine=EngineOptions(device="cpu"))
    )
    s = report.summary
    assert s.wasted_params == s.params - s.params_after > 0
    assert s.compress_command == compress_command(str(path), energy=0.99)
    first = s.advice[0]
    assert s.compress_command in first and f"{s.wasted_params:,}" in first
    assert s.top_wasters[0] in first
    # the default rule (k@0.9-p90-pow2 v2) retrains this r=16 adapter at r=8
    assert s.recommended_rank == 8 and s.nominal_rank == 16
    assert s.advice[1].startswith("Retrain at r=8")
    for layer in report.layers:
        assert layer.mostly_wasted == (layer.wasted_params * 2 > layer.params)
    assert s.assumed_scale_layers == 0 and s.assumed_scales == ()
