"""``--device`` with and without torch installed (torch is an optional dependency)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import SAMPLES
from factories import HAS_TORCH
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.engine import device as engine
from lora_audit.errors import UsageError

runner = CliRunner()
SAMPLE = str(SAMPLES / "minilm-r4-bf16")

#: Run a command in a fresh interpreter in which ``import torch`` fails, as without torch.
NO_TORCH = "import sys; sys.modules['torch'] = None; from lora_audit.cli import main; main()"


def without_torch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, timeout=300
    )


def test_without_torch_auto_is_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "torch_available", lambda: False)
    assert engine.device_type("auto") == "cpu"
    assert engine.device_type("cpu") == "cpu"


@pytest.mark.parametrize("name", ["cuda", "auto"])
def test_without_torch_resolve_device_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setattr(engine, "torch_available", lambda: False)
    with pytest.raises(UsageError, match="torch is not installed") as caught:
        engine.resolve_device(name)  # type: ignore[arg-type]
    assert "lora-rank-audit[gpu]" in str(caught.value)


def test_without_torch_every_command_runs_on_the_cpu() -> None:
    for args in (
        ["inspect", SAMPLE, "--format", "json"],
        ["inspect", SAMPLE, "--device", "auto", "--format", "json"],
        ["check", SAMPLE],
        ["compress", SAMPLE, "--rank", "2", "--dry-run"],
        ["compare", SAMPLE, SAMPLE],
    ):
        result = without_torch(*args)
        assert result.returncode in (0, 1), (args, result.stderr)
        assert result.stdout


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["inspect", SAMPLE, "--device", "cuda"], "--device cuda"),
        (["check", SAMPLE, "--device", "cuda"], "--device cuda"),
        (["inspect", SAMPLE, "--base", str(SAMPLES)], "--base"),
    ],
)
def test_without_torch_cuda_and_base_are_usage_errors(args: list[str], what: str) -> None:
    result = without_torch(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lora-audit: error: {what}"), lines
    assert "torch" in lines[0] and "lora-rank-audit[gpu]" in lines[0]
    assert result.stdout == ""


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_with_torch_and_no_gpu_cuda_is_a_usage_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = runner.invoke(app, ["inspect", SAMPLE, "--device", "cuda"])
    assert result.exit_code == 2
    assert "no CUDA device" in result.stderr
    auto = runner.invoke(app, ["inspect", SAMPLE, "--device", "auto", "--format", "json"])
    assert auto.exit_code == 0, auto.stderr
