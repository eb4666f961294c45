"""Comparisons that should not succeed, and messages that contradict themselves (issue 23).

Each test fails on 0.2.0: a merge or compare of unrelated adapters exited 0, a merge whose
inputs cancel reported "energy kept", ``--rank 4 --min-rank 8`` ended at rank 8, a run folder
was "found 1 adapter" and then "no adapter here", the suggested compress of a DoRA adapter
exited 2, ``compress --base`` without torch was "a bug", matplotlib's warnings reached stderr
as Python's multi-line warnings, an output had to be readable, and ``lora_alpha = 0`` (which
PEFT loads) was refused.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES
from factories import FakeAdapter, FakeLayer, planted_factors, write_peft
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.errors import ExitCode

runner = CliRunner()
R16 = SAMPLES / "minilm-r16"


def one_layer(directory: Path, name: str, *, out: int = 12, inp: int = 10, seed: int = 0) -> Path:
    b, a = planted_factors(out=out, inp=inp, rank=4, spectrum=np.array([3.0, 1, 0.1]), seed=seed)
    return write_peft(directory, FakeAdapter([FakeLayer(name, b, a)], {"r": 4, "lora_alpha": 8}))


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if "warning:" not in line]
    assert len(lines) == 1 and lines[0].startswith("lora-audit: error: "), stderr
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    return lines[0]


@pytest.fixture
def llama_and_bert(tmp_path: Path) -> tuple[Path, Path]:
    llama = one_layer(tmp_path / "llama", "model.layers.0.self_attn.q_proj")
    bert = one_layer(tmp_path / "bert", "bert.encoder.layer.0.attention.self.query", seed=1)
    return llama, bert


def test_merge_of_adapters_with_no_layer_in_common_is_refused(
    llama_and_bert: tuple[Path, Path], tmp_path: Path
) -> None:
    llama, bert = llama_and_bert
    out = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(llama), str(bert), "-o", str(out), "--rank", "2"])
    assert result.exit_code == ExitCode.INPUT, result.stderr
    assert "no layer in common — different base models?" in error_line(result.stderr)
    assert not out.exists()


def test_merge_of_different_modules_of_one_model_still_works(tmp_path: Path) -> None:
    q = one_layer(tmp_path / "q", "model.layers.0.self_attn.q_proj")
    v = one_layer(tmp_path / "v", "model.layers.0.self_attn.v_proj", seed=1)
    result = runner.invoke(app, ["merge", str(q), str(v), "--dry-run", "--rank", "2"])
    assert result.exit_code == 0, result.stderr


def test_compare_of_adapters_with_no_layer_in_common_is_refused(
    llama_and_bert: tuple[Path, Path],
) -> None:
    llama, bert = llama_and_bert
    result = runner.invoke(app, ["compare", str(llama), str(bert), "-f", "json"])
    assert result.exit_code == ExitCode.INPUT, result.stderr
    assert "no layer in common — different base models?" in error_line(result.stderr)
    assert result.stdout == ""


def test_merge_of_inputs_that_cancel_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "zero"
    args = ["merge", str(R16), str(R16), "--weights", "1,-1", "-o", str(out), "--rank", "4"]
    result = runner.invoke(app, args)
    assert result.exit_code == ExitCode.INPUT, result.stderr
    line = error_line(result.stderr)
    assert "the inputs cancel" in line and "nothing was written" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # a sum that does not cancel is merged as before
    args = ["merge", str(R16), str(R16), "--weights", "1,-0.5", "--dry-run", "--rank", "4"]
    assert runner.invoke(app, [*args, "-f", "json"]).exit_code == 0


def test_merge_warns_about_the_layers_that_cancel(tmp_path: Path) -> None:
    one_layer(tmp_path / "a", "model.layers.0.q_proj")
    b1, a1 = planted_factors(out=12, inp=10, rank=4, spectrum=np.array([3.0, 1, 0.1]), seed=0)
    b2, a2 = planted_factors(out=12, inp=10, rank=4, spectrum=np.array([2.0, 1, 0.5]), seed=5)
    layers = [
        FakeLayer("model.layers.0.q_proj", b1, a1),
        FakeLayer("model.layers.0.v_proj", b2, a2),
    ]
    write_peft(tmp_path / "b", FakeAdapter(layers, {"r": 4, "lora_alpha": 8}))
    args = ["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", "1,-1"]
    result = runner.invoke(app, [*args, "--dry-run", "--rank", "2", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    assert "1 of 2 layer(s) cancel" in result.stderr and "model.layers.0.q_proj" in result.stderr


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--rank", "4", "--min-rank", "8"], "--rank 4 contradicts --min-rank 8"),
        (["--rank", "4", "--max-rank", "2"], "--rank 4 contradicts --max-rank 2"),
    ],
)
@pytest.mark.parametrize("command", ["compress", "merge"])
def test_contradictory_rank_flags_are_a_usage_error(
    command: str, flags: list[str], says: str, tmp_path: Path
) -> None:
    inputs = [str(R16)] if command == "compress" else [str(R16), str(R16)]
    result = runner.invoke(app, [command, *inputs, "--dry-run", *flags])
    assert result.exit_code == ExitCode.USAGE, result.stderr
    assert says in error_line(result.stderr)


def test_rank_flags_that_agree_are_accepted() -> None:
    args = ["compress", str(R16), "--dry-run", "--rank", "8", "--min-rank", "8", "--max-rank", "8"]
    result = runner.invoke(app, [*args, "-f", "json"])
    assert result.exit_code == 0, result.stderr
    assert {layer["new_rank"] for layer in json.loads(result.stdout)["layers"]} == {8}


def test_a_run_folder_of_checkpoints_gets_one_consistent_message() -> None:
    result = runner.invoke(app, ["inspect", str(SAMPLES / "minilm-run")])
    assert result.exit_code == ExitCode.INPUT
    line = error_line(result.stderr)
    assert "found 1 adapter" not in result.stderr, result.stderr
    assert "no adapter here but 4 checkpoint-* directories" in line
    assert "--include-checkpoints" in line
    assert result.stderr.strip() == line


def _dora(tmp_path: Path) -> tuple[Path, Path]:
    """A PEFT DoRA adapter with room to truncate, and a base model that has its weights."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    layers, extra, weights = [], {}, {}
    gen = torch.Generator().manual_seed(0)
    for i in range(2):
        name = f"model.layers.{i}.q_proj"
        b, a = planted_factors(out=24, inp=16, rank=4, spectrum=np.array([3.0, 1.0, 0.02]), seed=i)
        layers.append(FakeLayer(name, b, a))
        extra[f"base_model.model.{name}.lora_magnitude_vector"] = torch.rand(24) + 0.5
        weights[f"{name}.weight"] = torch.randn(24, 16, generator=gen)
    adapter = write_peft(tmp_path / "dora", FakeAdapter(layers, {"r": 4, "use_dora": True}, extra))
    base = tmp_path / "base"
    base.mkdir()
    save_file(weights, str(base / "model.safetensors"))
    return adapter, base


def test_the_compress_command_suggested_for_a_dora_adapter_runs(tmp_path: Path) -> None:
    adapter, base = _dora(tmp_path)
    result = runner.invoke(app, ["inspect", str(adapter), "-f", "json", "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)["summary"]
    command = summary["compress_command"]
    assert command is not None and command.endswith("--base BASE"), command
    assert any("--allow-dora" in line for line in summary["advice"])  # what the choice means
    args = shlex.split(command.replace("BASE", shlex.quote(str(base))))
    assert args[0] == "lora-audit"
    result = runner.invoke(app, [*args[1:], "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    assert (Path(args[args.index("-o") + 1]) / "adapter_model.safetensors").is_file()
    # check's fix names the same flags
    args = ["check", str(adapter), "--max-waste", "0.01", "--device", "cpu", "-f", "json"]
    result = runner.invoke(app, args)
    assert result.exit_code == ExitCode.FINDINGS
    fixes = [f["fix"] for f in json.loads(result.stdout)["findings"] if f["rule"] == "max-waste"]
    assert fixes and "--energy 0.99 --base BASE`" in fixes[0] and "--allow-dora" in fixes[0]


def test_the_compress_command_suggested_for_a_kohya_dora_file_runs(tmp_path: Path) -> None:
    """kohya/LyCORIS DoRA (``dora_scale``): --base cannot recompute it, --allow-dora runs."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(SAMPLES / "sd" / "kohya-lora.safetensors"))
    for key in [k for k in tensors if k.endswith(".lora_up.weight")]:
        out = tensors[key].shape[0]
        tensors[key.replace(".lora_up.weight", ".dora_scale")] = np.ones((out, 1), np.float16)
    path = tmp_path / "dora.safetensors"
    save_file(tensors, str(path))
    result = runner.invoke(app, ["inspect", str(path), "-f", "json"])
    assert result.exit_code == 0, result.stderr
    command = json.loads(result.stdout)["summary"]["compress_command"]
    assert command is not None and command.endswith("--allow-dora"), command
    args = shlex.split(command)
    result = runner.invoke(app, args[1:])
    assert result.exit_code == 0, result.stderr
    assert Path(args[args.index("-o") + 1]).is_file()


def test_compress_base_without_torch_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dora = SAMPLES / "minilm-dora-r4"
    messages = []
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    for command in (["inspect", str(dora)], ["compress", str(dora), "--dry-run", "--rank", "2"]):
        result = runner.invoke(app, [*command, "--base", str(tmp_path), "--device", "cpu"])
        assert result.exit_code == ExitCode.USAGE, result.stderr
        messages.append(error_line(result.stderr))
    assert messages[0] == messages[1], messages
    assert "--base needs torch, which is not installed" in messages[1]


def test_matplotlib_warnings_become_one_line_warnings(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    a = one_layer(tmp_path / "a", "model.layers.0.q_proj")
    b = one_layer(tmp_path / "b", "model.layers.0.q_proj", out=16, seed=1)  # nothing compared
    result = runner.invoke(app, ["compare", str(a), str(b), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("lora-audit: warning: ") for line in lines), result.stderr
    assert "UserWarning" not in result.stderr
    assert any("--plot: matplotlib: " in line for line in lines), result.stderr
    assert (tmp_path / "p.png").stat().st_size > 0


@pytest.mark.parametrize("option", ["-o", "--plot"])
def test_an_output_need_not_be_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str
) -> None:
    """Only writing matters (``-o /dev/stdout`` on a write-only descriptor, a file mode 0o200:
    root may read anything, so the check is simulated)."""
    pytest.importorskip("matplotlib")
    target = tmp_path / ("out.png" if option == "--plot" else "out.json")
    target.write_bytes(b"")
    real_access = os.access

    def access(path: object, mode: int, **kwargs: object) -> bool:
        if mode & os.R_OK and os.fspath(path) == str(target):  # type: ignore[call-overload]
            return False
        return real_access(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    args = ["inspect", str(R16), "-f", "json", option, str(target), "--force"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert target.stat().st_size > 0


def test_lora_alpha_zero_is_read_with_one_loud_warning(tmp_path: Path) -> None:
    adapter = one_layer(tmp_path / "zero", "model.layers.0.q_proj")
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 0}))
    result = runner.invoke(app, ["inspect", str(adapter), "-f", "json"])
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "scale 0 in every layer" in lines[0], result.stderr
    report = json.loads(result.stdout)
    assert report["layers"][0]["spectral_norm"] == 0 and len(report["warnings"]) == 1
