"""``lora-audit check --target``: adapters that vLLM or llama.cpp would refuse or read at other
scales fail with a fix, and the ``compress --fit`` command the fix names gives one that passes.

The r=64 adapter is saved by PEFT itself on the tiny BERT; the others are the bundled samples.
"""

from __future__ import annotations

import json
import shlex
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLES
from typer.testing import CliRunner

from lora_audit.cli import app

runner = CliRunner()
#: Only the target rules: the waste rules off.
QUIET_POLICY = ("--max-waste", "1", "--min-rank-used", "0")


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path, a repository root, so no policy file from outside is found."""
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _sample(workdir: Path, name: str) -> str:
    if not (SAMPLES / name / "adapter_model.safetensors").is_file():
        pytest.skip(f"sample_adapters/{name} not generated")
    shutil.copytree(SAMPLES / name, workdir / name)
    return name


def _r64(workdir: Path) -> str:
    """A PEFT LoRA of rank 64 on the tiny BERT, its B drawn at random (trained-like)."""
    import peft
    import torch
    from tiny_bert import tiny_base

    torch.manual_seed(1)
    config = peft.LoraConfig(
        r=64, lora_alpha=32, target_modules=["query", "value"], init_lora_weights=False
    )
    peft.get_peft_model(tiny_base(), config).save_pretrained(str(workdir / "r64"))
    return "r64"


def check(*args: str) -> tuple[int, dict[str, Any], str]:
    result = runner.invoke(app, ["check", "--device", "cpu", "-f", "json", *QUIET_POLICY, *args])
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, report, result.stderr


def _rules(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["rule"]: f for f in report["findings"]}


def _run_fix(fix: str) -> None:
    words = shlex.split(fix)
    assert words[:2] == ["lora-audit", "compress"], fix
    result = runner.invoke(app, [*words[1:], "--device", "cpu", "--report", f"{words[4]}.json"])
    assert result.exit_code == 0, result.stderr


def test_rank_64_fails_vllm_default_and_the_fix_passes(workdir: Path) -> None:
    adapter = _r64(workdir)
    code, report, err = check(adapter, "--target", "vllm")
    assert code == 1, err
    assert report["targets"] == ["vllm:max-lora-rank=16"]
    assert set(_rules(report)) == {"vllm-max-lora-rank"}
    finding = _rules(report)["vllm-max-lora-rank"]
    assert (finding["measured"], finding["limit"]) == (64, 16)
    assert "--max-lora-rank 64" in finding["message"]
    _run_fix(finding["fix"])
    code, report, err = check("r64-vllm16", "--target", "vllm:max-lora-rank=16")
    assert code == 0, (err, report["findings"])
    assert report["status"] == "pass"
    # The same adapter passes a server started with a larger max_lora_rank.
    code, report, _ = check(adapter, "--target", "vllm:max-lora-rank=64")
    assert code == 0, report["findings"]


def test_modules_to_save_fails_vllm_and_llama_cpp(workdir: Path) -> None:
    code, report, err = check(
        _sample(workdir, "minilm-r16"), "--target", "vllm", "--target", "llama.cpp"
    )
    assert code == 1, err
    rules = _rules(report)
    assert set(rules) == {"vllm-refused", "llama.cpp-refused"}
    assert "modules_to_save (classifier, score)" in rules["vllm-refused"]["message"]
    assert rules["llama.cpp-refused"]["measured"] == 2
    # peft reads what it wrote.
    code, report, _ = check("minilm-r16", "--target", "peft")
    assert code == 0 and report["findings"] == []


def test_dora_fails_vllm(workdir: Path) -> None:
    code, report, err = check(_sample(workdir, "minilm-dora-r4"), "--target", "vllm")
    assert code == 1, err
    finding = _rules(report)["vllm-refused"]
    assert "DoRA" in finding["message"] and "use_dora" in finding["fix"]


def test_per_layer_scales_fail_vllm_and_llama_cpp_and_the_fix_says_what_goes_first(
    workdir: Path,
) -> None:
    """rsLoRA with rank_pattern and alpha_pattern: vLLM reads one lora_alpha / √r, llama.cpp
    lora_alpha / each layer's rank. The sample also has modules_to_save heads, which both
    servers refuse and ``--fit`` cannot remove: the fix says so, and ``--fit`` refuses it
    (tests/commands/test_compress_fit.py fits such an adapter without heads)."""
    adapter = _sample(workdir, "minilm-r8-rslora-patterns")
    code, report, err = check(adapter, "--target", "vllm", "--target", "llama.cpp")
    assert code == 1, err
    rules = _rules(report)
    assert 0 < rules["vllm-one-scale"]["measured"] < len(report["adapters"][0]["layers"])
    assert rules["llama.cpp-scale"]["measured"] == len(report["adapters"][0]["layers"])
    first = "once the adapter is without modules_to_save: "
    for rule, target in (
        ("vllm-one-scale", "vllm:max-lora-rank=16"),
        ("llama.cpp-scale", "llama.cpp"),
    ):
        fix = rules[rule]["fix"]
        assert fix.startswith(first) and fix.endswith(f"--fit {target}"), fix
        words = shlex.split(fix.removeprefix(first))
        result = runner.invoke(app, [*words[1:], "--device", "cpu"])
        assert result.exit_code == 2 and result.stdout == ""
        assert "modules_to_save (classifier, score)" in result.stderr


def test_json_with_targets_validates_against_the_schema(workdir: Path) -> None:
    import jsonschema
    from referencing import Registry, Resource

    def load(name: str) -> dict[str, object]:
        text = (resources.files("lora_audit") / "report" / "schema" / name).read_text("utf-8")
        return json.loads(text)  # type: ignore[no-any-return]

    inspect_schema, check_schema = load("inspect.schema.json"), load("check.schema.json")
    registry = Registry().with_resource(
        str(inspect_schema["$id"]), Resource.from_contents(inspect_schema)
    )
    adapter = _sample(workdir, "minilm-r8-rslora-patterns")
    _, report, _ = check(adapter, "--target", "vllm:max-lora-rank=8", "--target", "llama.cpp")
    jsonschema.Draft202012Validator(check_schema, registry=registry).validate(report)
    assert report["targets"] == ["vllm:max-lora-rank=8", "llama.cpp"]
    assert "vllm-max-lora-rank" in report["rules"]
    # Without --target the report keeps the form it had.
    _, report, _ = check(adapter)
    assert "targets" not in report


@pytest.mark.parametrize(
    "value",
    ["tgi", "vllm:max-lora-rank=12", "vllm:max_lora_rank=16", "peft:x", "vllm:max-lora-rank="],
)
def test_bad_target_is_a_usage_error(workdir: Path, value: str) -> None:
    result = runner.invoke(app, ["check", "--device", "cpu", "x", "--target", value])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "vllm:max-lora-rank=N" in result.stderr


def test_settings_file_target_and_the_flag_replacing_it(workdir: Path) -> None:
    adapter = _sample(workdir, "minilm-r16")
    (workdir / "lora-audit.toml").write_text('target = ["vllm", "llama.cpp"]\n', "utf-8")
    code, report, err = check(adapter)
    assert code == 1, err
    assert report["targets"] == ["vllm:max-lora-rank=16", "llama.cpp"]
    assert {f["rule"] for f in report["findings"]} == {"vllm-refused", "llama.cpp-refused"}
    code, report, _ = check(adapter, "--target", "peft")
    assert code == 0 and report["targets"] == ["peft"]


@pytest.mark.parametrize("line", ['target = "vllm:max-lora-rank=12"', "target = 16"])
def test_settings_file_bad_target_is_an_input_error(workdir: Path, line: str) -> None:
    adapter = _sample(workdir, "minilm-r16")
    (workdir / "lora-audit.toml").write_text(line + "\n", "utf-8")
    code, _, err = check(adapter)
    assert code == 3
    assert "lora-audit.toml: target = " in err and "vllm:max-lora-rank=N" in err
