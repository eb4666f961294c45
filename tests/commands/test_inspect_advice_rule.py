"""The advice follows one named, versioned rule, and every output carries its basis."""

from __future__ import annotations

import dataclasses
import json

from conftest import SAMPLES
from typer.testing import CliRunner

import lora_audit
from lora_audit.cli import app
from lora_audit.cli.settings_file import default
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.decisions.advice_rule import DEFAULT_ADVICE_RULE, AdviceBasis
from lora_audit.decisions.check_rules import Policy
from lora_audit.formats import load_adapter
from lora_audit.render.table import render_inspect

R16 = SAMPLES / "minilm-r16"
#: A rule other than the default in every value, as the study might choose.
OTHER = dataclasses.replace(
    DEFAULT_ADVICE_RULE,
    id="median-k90",
    version=DEFAULT_ADVICE_RULE.version + 1,
    tau=0.9,
    quantile=0.5,
    rounding="none",
    basis=AdviceBasis(
        tasks=("minilm-sst2", "minilm-agnews"),
        seeds=3,
        tolerance="worst seed ≥ worst original seed − 1 point",
        docs="docs/advice.md",
        not_validated_on=("decoder LLMs", "diffusion models"),
    ),
)


def test_every_default_of_the_advice_comes_from_the_one_constant() -> None:
    assert AuditOptions().rule == DEFAULT_ADVICE_RULE
    assert Policy().coverage == DEFAULT_ADVICE_RULE.quantile
    assert default("coverage") == DEFAULT_ADVICE_RULE.quantile
    report = lora_audit.inspect(R16, device="cpu")
    basis = report.summary.advice_basis
    assert basis is not None
    assert (basis.rule, basis.version, basis.tau, basis.quantile, basis.rounding) == (
        DEFAULT_ADVICE_RULE.id,
        DEFAULT_ADVICE_RULE.version,
        DEFAULT_ADVICE_RULE.tau,
        DEFAULT_ADVICE_RULE.quantile,
        DEFAULT_ADVICE_RULE.rounding,
    )
    assert basis.docs.endswith("docs/advice.md") and basis.not_validated_on
    assert not basis.custom and report.settings.coverage == DEFAULT_ADVICE_RULE.quantile


def test_another_rule_changes_the_advice_and_names_itself() -> None:
    adapter = load_adapter(R16)
    before = inspect_adapter(adapter, options=AuditOptions()).summary
    report = inspect_adapter(adapter, options=AuditOptions(advice=OTHER, coverage=OTHER.quantile))
    after = report.summary
    assert after.recommended_rank < before.recommended_rank  # k@0.9 median, unrounded
    assert after.advice_basis is not None
    assert (after.advice_basis.rule, after.advice_basis.version) == ("median-k90", OTHER.version)
    assert after.advice_basis.tasks == OTHER.basis.tasks and after.advice_basis.seeds == 3
    label = f"median-k90 v{OTHER.version}"
    assert label in after.advice_reason and "τ=0.9 the median" in after.advice_reason
    table = render_inspect(report, width=200)
    assert label in table and "validated on minilm-sst2, minilm-agnews" in table
    # --energy stays compress's τ: the waste columns move, the advice does not
    at_95 = inspect_adapter(
        adapter, options=AuditOptions(energy=0.95, advice=OTHER, coverage=OTHER.quantile)
    ).summary
    assert at_95.params_after < after.params_after
    assert at_95.recommended_rank == after.recommended_rank
    assert at_95.rank_pattern == after.rank_pattern


def test_coverage_flag_marks_the_rule_custom_in_json() -> None:
    result = CliRunner().invoke(
        app, ["inspect", str(R16), "-f", "json", "--coverage", "0.5", "--no-config"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    basis = summary["advice_basis"]
    assert basis["custom"] is True and basis["quantile"] == 0.5
    assert basis["rule"] == DEFAULT_ADVICE_RULE.id
    assert basis["version"] == DEFAULT_ADVICE_RULE.version
    assert summary["advice_verdict"] in {"keep", "retrain"}
    assert "custom median" in summary["advice_reason"]
    assert "--coverage" in summary["advice_reason"]
