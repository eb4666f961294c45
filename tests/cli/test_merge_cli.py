"""``lora-audit merge`` through the CLI: exit codes, reports, the files it writes and refuses."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.cli.merge import MergeFormat, parse_weights
from lora_audit.errors import UsageError
from lora_audit.formats import load_adapter

runner = CliRunner()
SD = SAMPLES / "sd"
KOHYA = [str(SD / "kohya-lora.safetensors"), str(SD / "lycoris-loha.safetensors")]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_parse_weights() -> None:
    assert parse_weights("0.8,1,-0.5") == [0.8, 1.0, -0.5]
    assert parse_weights(None) is None
    for bad in ("a,1", "1,,2", "inf,1", "nan"):
        with pytest.raises(UsageError):
            parse_weights(bad)


def test_formats_are_the_registered_ones() -> None:
    from lora_audit.render import formats_for

    assert [f.value for f in MergeFormat] == [f.value for f in formats_for("merge")]


def test_kohya_merge_writes_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    before = [digest(Path(p)) for p in KOHYA]
    args = ["merge", *KOHYA, "-o", str(out), "--weights", "0.8,1.0", "--energy", "0.99"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "merge 0.8·[0] + 1·[1]" in result.stdout and "written" in result.stdout
    assert [digest(Path(p)) for p in KOHYA] == before, "inputs are never written"
    merged = load_adapter(out)
    inputs = [load_adapter(Path(p)) for p in KOHYA]
    assert {x.name for x in merged.layers} == {x.name for a in inputs for x in a.layers}
    from safetensors import safe_open

    with safe_open(str(out), "np") as fh:
        meta = fh.metadata()
    assert [m["weight"] for m in json.loads(meta["lora_audit.merge"])] == [0.8, 1.0]
    assert meta["ss_network_dim"] == "Dynamic" and meta["ss_network_module"] == "networks.lora"
    assert "ss_network_args" not in meta  # the LoHa input's algo no longer describes the file


def test_json_report_validates_against_the_schema(tmp_path: Path) -> None:
    from importlib import resources

    import jsonschema

    schema = json.loads(
        (resources.files("lora_audit") / "report" / "schema" / "merge.schema.json").read_text(
            "utf-8"
        )
    )
    for extra in (["--rank", "2", "--dry-run"], ["--concat", "-o", str(tmp_path / "c.st")]):
        result = runner.invoke(app, ["merge", *KOHYA, *extra, "-f", "json"])
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        jsonschema.validate(report, schema)
        assert report["kind"] == "merge" and len(report["inputs"]) == 2
    assert report["settings"]["mode"] == "concat" and report["summary"]["max_relative_error"] == 0


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "never.safetensors"
    result = runner.invoke(app, ["merge", *KOHYA, "-o", str(out), "--rank", "2", "--dry-run"])
    assert result.exit_code == 0, result.stderr
    assert "dry run" in result.stdout and not out.exists()


@pytest.mark.parametrize(
    "args",
    [
        [*KOHYA, "--rank", "2"],  # no -o
        [*KOHYA, "-o", "X.safetensors"],  # no rule
        [*KOHYA, "-o", "X.safetensors", "--rank", "2", "--energy", "0.9"],
        [*KOHYA, "-o", "X.safetensors", "--concat", "--rank", "2"],
        [*KOHYA, "-o", "X.safetensors", "--rank", "2", "--weights", "1"],
        [*KOHYA, "-o", "X.safetensors", "--rank", "2", "--weights", "1,x"],
        [KOHYA[0], "-o", "X.safetensors", "--rank", "2"],  # one input
        [*KOHYA, "-o", KOHYA[1], "--rank", "2", "--force"],  # over an input
    ],
    ids=[
        "no-output",
        "no-rule",
        "two-rules",
        "concat-rank",
        "weights-count",
        "weights-nan",
        "one-input",
        "over-input",
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    args = [a.replace("X.safetensors", str(tmp_path / "x.safetensors")) for a in args]
    result = runner.invoke(app, ["merge", *args])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("lora-audit: error:") and result.stdout == ""
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([SAMPLES / "minilm-r16", SAMPLES / "minilm-dora-r4"], "DoRA"),
        ([SAMPLES / "minilm-r16", SD / "kohya-lora.safetensors"], "cannot be merged"),
        ([SAMPLES / "minilm-r16", SAMPLES / "minilm-r8-rslora-patterns"], "--drop-extras"),
    ],
    ids=["dora", "families", "extras"],
)
def test_bad_inputs_exit_3(tmp_path: Path, inputs: list[Path], message: str) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["merge", *map(str, inputs), "-o", str(out), "--rank", "4"])
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_force_replaces_an_earlier_output(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    base = ["merge", *KOHYA, "-o", str(out)]
    assert runner.invoke(app, [*base, "--rank", "1"]).exit_code == 0
    again = runner.invoke(app, [*base, "--rank", "2"])
    assert again.exit_code == 2 and "exists" in again.stderr
    assert runner.invoke(app, [*base, "--rank", "2", "--force"]).exit_code == 0
    assert {x.rank for x in load_adapter(out).layers} == {2}


def test_diffusers_reads_the_kohya_output(tmp_path: Path) -> None:
    """diffusers' own kohya conversion takes every key, at scale alpha/r = 1."""
    conversion = pytest.importorskip("diffusers.loaders.lora_conversion_utils")
    from safetensors.torch import load_file

    out = tmp_path / "m.safetensors"
    inputs = [*KOHYA, str(SD / "lycoris-locon-tucker.safetensors")]
    result = runner.invoke(app, ["merge", *inputs, "-o", str(out), "--ratio", "50"])
    assert result.exit_code == 0, result.stderr
    state = load_file(str(out))
    converted, alphas = conversion._convert_non_diffusers_lora_to_diffusers(dict(state))
    merged = load_adapter(out)
    assert len(converted) == 2 * len(merged.layers) and len(alphas) == len(merged.layers)
    ours = [t for k, t in state.items() if k.endswith("lora_down.weight")]
    for key, alpha in alphas.items():
        stem = key.removesuffix(".alpha")
        down = converted.get(stem, converted.get(f"{stem}.lora.down.weight"))
        assert down is not None, key
        assert alpha == down.shape[0]  # alpha = k: diffusers applies scale 1
        assert any(t.shape == down.shape and np.array_equal(down, t) for t in ours), key
