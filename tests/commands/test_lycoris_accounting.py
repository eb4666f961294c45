"""LyCORIS accounting: inspect's waste, its advice, check's gate and compress agree.

On the bundled LoHa, LoKr and LoCon-Tucker samples and on a LoHa that is truly oversized,
the parameters ``inspect`` says are wasted are exactly those ``compress --energy τ`` removes,
the advice never asks for more parameters than the adapter stores, and every ``check``
finding names a command that removes what it measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from lora_audit.adapter import ScaleSource
from lora_audit.commands.check import assemble
from lora_audit.commands.compress import CompressOptions, compress_adapter
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.decisions.check_rules import Policy
from lora_audit.decisions.compress_ranks import RankRule
from lora_audit.engine.device import EngineOptions
from lora_audit.formats import load_adapter
from lora_audit.render.table import render_inspect
from lora_audit.report import InspectReport

CPU = EngineOptions(device="cpu")
SAMPLES = Path(__file__).resolve().parents[2] / "sample_adapters" / "sd"
TAU = 0.99


def oversized_loha(path: Path, *, dim: int = 8, size: int = 48) -> Path:
    """A LoHa of network_dim ``dim`` whose ΔW has rank 2: (w1a·w1b) rank 1, (w2a·w2b) rank 2."""
    rng = np.random.default_rng(3)
    m = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_q"
    w1a = np.zeros((size, dim), np.float32)
    w1b = np.zeros((dim, size), np.float32)
    w1a[:, 0], w1b[0] = rng.standard_normal(size), rng.standard_normal(size)
    w2a = np.zeros((size, dim), np.float32)
    w2b = np.zeros((dim, size), np.float32)
    w2a[:, :2], w2b[:2] = rng.standard_normal((size, 2)), rng.standard_normal((2, size))
    tensors = {
        f"{m}.hada_w1_a": w1a,
        f"{m}.hada_w1_b": w1b,
        f"{m}.hada_w2_a": w2a,
        f"{m}.hada_w2_b": w2b,
        f"{m}.alpha": np.array(float(dim), np.float32),
    }
    save_file(tensors, str(path), metadata={"ss_network_module": "lycoris.kohya"})
    return path


def inspect(path: Path) -> InspectReport:
    return inspect_adapter(load_adapter(path), options=AuditOptions(energy=TAU, engine=CPU))


def files(tmp_path: Path) -> list[Path]:
    return [
        SAMPLES / "lycoris-loha.safetensors",
        SAMPLES / "lycoris-lokr.safetensors",
        SAMPLES / "lycoris-locon-tucker.safetensors",
        oversized_loha(tmp_path / "oversized.safetensors"),
    ]


@pytest.mark.parametrize("index", range(4))
def test_waste_is_what_compress_removes(tmp_path: Path, index: int) -> None:
    path = files(tmp_path)[index]
    report = inspect(path)
    done = compress_adapter(
        load_adapter(path),
        options=CompressOptions(
            rule=RankRule(mode="energy", value=TAU), output=None, dry_run=True, engine=CPU
        ),
    )
    by_name = {layer.name: layer for layer in done.layers}
    for layer in report.layers:
        kept = by_name[layer.name]
        assert layer.params_after == kept.params_after, layer.name
        assert (layer.wasted_params > 0) == (kept.action == "truncated"), layer.name
        assert layer.wasted_rank == layer.rank - kept.new_rank, layer.name
    s = report.summary
    assert s.params_after == done.summary.params_after
    assert s.wasted_fraction == pytest.approx(1 - done.summary.params_after / s.params)
    # the advice never grows the adapter
    assert s.params_retrain <= s.params
    assert "instead of" not in " ".join(s.advice) or s.params_retrain < s.params


def test_lokr_sample_wastes_nothing_compress_can_remove() -> None:
    report = inspect(SAMPLES / "lycoris-lokr.safetensors")
    s = report.summary
    assert s.params_after == s.params and s.wasted_fraction == 0.0
    assert s.keep_structure and s.params_retrain == s.params
    assert s.rank_pattern == {} and not any("compress" in line for line in s.advice)
    findings = assemble(reports=[report], errors=[], policy=Policy(max_waste=0.0), policy_file=None)
    assert findings.findings == () and findings.status == "pass"


def test_loha_table_shows_the_trained_dim() -> None:
    report = inspect(SAMPLES / "lycoris-loha.safetensors")
    assert {layer.network_dim for layer in report.layers} == {4}
    assert report.summary.network_dims == (4,)
    text = render_inspect(report)
    assert "16/d4" in text and "network_dim=4" in text
    assert max(len(line) for line in text.splitlines()) <= 100


@pytest.mark.parametrize("rule", ["max-waste", "max-layer-waste"])
def test_every_fix_is_satisfied_by_the_command_it_names(tmp_path: Path, rule: str) -> None:
    path = oversized_loha(tmp_path / "oversized.safetensors")
    policy = (
        Policy(max_waste=0.5, min_rank_used=0)
        if rule == "max-waste"
        else Policy(max_waste=1.0, max_layer_waste=0.5, min_rank_used=0)
    )
    before = assemble(reports=[inspect(path)], errors=[], policy=policy, policy_file=None)
    assert [f.rule for f in before.findings] == [rule]
    finding = before.findings[0]
    assert finding.measured == pytest.approx(1 - 2 * 96 / (2 * 8 * 96))  # rank 2 of LoHa dim 8
    command = f"lora-audit compress {path} -o OUT --energy {TAU:g}"
    assert command in finding.fix
    out = tmp_path / "out.safetensors"
    compress_adapter(
        load_adapter(path),
        options=CompressOptions(rule=RankRule(mode="energy", value=TAU), output=out, engine=CPU),
    )
    after = assemble(reports=[inspect(out)], errors=[], policy=policy, policy_file=None)
    assert after.findings == () and after.status == "pass"
    assert after.adapters[0].summary.params == 2 * 96


def test_scale_source_reaches_the_report_and_the_schema() -> None:
    import dataclasses
    import json
    from importlib import resources

    import jsonschema

    from lora_audit.render import OutputFormat, render

    adapter = load_adapter(SAMPLES / "lycoris-loha.safetensors")
    sources: list[ScaleSource] = ["module_alpha", "module_alpha", "assumed"]
    adapter = dataclasses.replace(
        adapter,
        layers=tuple(
            dataclasses.replace(layer, scale_source=source)
            for layer, source in zip(adapter.layers, sources, strict=True)
        ),
    )
    report = inspect_adapter(adapter, options=AuditOptions(energy=TAU, engine=CPU))
    assert [layer.scale_source for layer in report.layers] == sources
    assert report.adapter.scale_sources == {"assumed": 1, "module_alpha": 2}
    data = json.loads(render(report, OutputFormat.JSON))
    schema = json.loads(
        (resources.files("lora_audit") / "report" / "schema" / "inspect.schema.json").read_text(
            "utf-8"
        )
    )
    jsonschema.validate(data, schema)
    assert data["summary"]["network_dims"] == [4]
    verdict = data["summary"]["advice_verdict"]
    assert data["summary"]["keep_structure"] is (verdict == "keep-structure")
    bad = {**data, "layers": [{**data["layers"][0], "scale_source": "guessed"}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


@pytest.mark.parametrize("source", ["assumed", "module_alpha"])
def test_compress_table_flags_an_assumed_scale(source: ScaleSource) -> None:
    import dataclasses

    from lora_audit.render import OutputFormat, render

    adapter = load_adapter(SAMPLES / "lycoris-loha.safetensors")
    adapter = dataclasses.replace(
        adapter,
        layers=tuple(dataclasses.replace(layer, scale_source=source) for layer in adapter.layers),
    )
    done = compress_adapter(
        adapter,
        options=CompressOptions(
            rule=RankRule(mode="energy", value=TAU), output=None, dry_run=True, engine=CPU
        ),
    )
    assert done.adapter.scale_sources == {source: 3}
    text = render(done, OutputFormat.TABLE)
    assert ("scale assumed for 3 of 3 layers" in text) == (source == "assumed")
