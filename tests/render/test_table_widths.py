"""Every table at 60, 80, 100 and 160 columns: no line too long, no number or verdict cut.

At 80 columns every number and verdict printed at 160 is still printed whole (parsed from
the output); at 60 optional columns may go, but whatever number is printed is whole.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLES
from factories import FakeAdapter, FakeLayer, planted_factors, write_peft
from rich.cells import cell_len
from safetensors.torch import save_file
from typer.testing import CliRunner

from lora_audit.cli import app

runner = CliRunner()
WIDTHS = (60, 80, 100, 160)
#: A number as printed: ``12,288``, ``0.9192``, ``25.3%``, ``384×1536`` gives 384 and 1536.
NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?%?(?![\w])")
VERDICTS = re.compile(r"\b(pass|fail|unreadable|keep|PASS|FAIL|DRIFT|ERROR)\b|↑")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A Llama-named PEFT adapter (``model.layers.N.self_attn.q_proj``…) and its base."""
    root = tmp_path_factory.mktemp("llama")
    shapes = {"self_attn.q_proj": (24, 16), "mlp.up_proj": (40, 16)}
    layers, weights = [], {}
    gen = torch.Generator().manual_seed(0)
    for i in range(3):
        for name, (out, inp) in shapes.items():
            spectrum = np.array([3.0, 1.0, 0.2])
            b, a = planted_factors(out=out, inp=inp, rank=4, spectrum=spectrum, seed=i)
            layers.append(FakeLayer(f"model.layers.{i}.{name}", b, a))
            weights[f"model.layers.{i}.{name}.weight"] = torch.randn(out, inp, generator=gen)
    adapter = write_peft(root / "adapter", FakeAdapter(layers, {"r": 4}))
    (root / "base").mkdir()
    save_file(weights, str(root / "base" / "model.safetensors"))
    return adapter, root / "base"


def cases(llama: tuple[Path, Path]) -> dict[str, list[str]]:
    adapter, base = (str(p) for p in llama)
    r16, r8 = str(SAMPLES / "minilm-r16"), str(SAMPLES / "minilm-r8-rslora-patterns")
    kohya = str(SAMPLES / "sd" / "kohya-lora.safetensors")
    return {
        "inspect": ["inspect", r16, "--device", "cpu"],
        "inspect-kohya": ["inspect", kohya, "--device", "cpu"],
        "inspect-llama": ["inspect", adapter, "--device", "cpu"],
        "inspect-base": ["inspect", adapter, "--base", base, "--device", "cpu"],
        "check": ["check", r16, kohya],
        "compress": ["compress", r16, "--dry-run", "--energy", "0.9"],
        "compress-kohya": ["compress", kohya, "--dry-run", "--energy", "0.9"],
        "trend": ["trend", str(SAMPLES / "minilm-run")],
        "compare": ["compare", r16, r8],
    }


def render(args: list[str], width: int) -> str:
    result = runner.invoke(app, args, env={"COLUMNS": str(width), "NO_COLOR": "1"})
    assert result.exit_code in (0, 1), result.output
    return result.stdout


def numbers(text: str) -> Counter[str]:
    return Counter(NUMBER.findall(text))


ALL_CASES = ["inspect", "inspect-kohya", "inspect-llama", "inspect-base", "check", "compress"]
ALL_CASES += ["compress-kohya", "trend", "compare"]


@pytest.mark.parametrize("case", ALL_CASES)
def test_every_number_survives_narrow_widths(case: str, llama: tuple[Path, Path]) -> None:
    args = cases(llama)[case]
    texts = {width: render(args, width) for width in WIDTHS}
    for width, text in texts.items():
        lines = text.split("\n")
        assert all(cell_len(line) <= width for line in lines), (width, text)
        assert all(line == line.rstrip() for line in lines), (width, "trailing spaces")
        assert "…" not in text, (width, text)  # nothing cut with an ellipsis
    wide = numbers(texts[160])
    for width in (80, 100):
        missing = wide - numbers(texts[width])
        assert not missing, (width, missing, texts[width])
        assert set(VERDICTS.findall(texts[160])) <= set(VERDICTS.findall(texts[width]))
    assert set(numbers(texts[60])) <= set(wide) | set(numbers(texts[80])), texts[60]


def test_names_fold_at_boundaries_not_mid_word(llama: tuple[Path, Path]) -> None:
    text = render(cases(llama)["inspect"], 80)
    names = [line.split()[0] for line in text.split("\n")[3:40] if line.strip()]
    words = {"attention.", "output.", "dense", "self.", "key", "query", "value"}
    folded = [n for n in names if not n.startswith("encoder.") and "." in n]
    assert all(
        set(re.findall(r"[a-z]+\.?", n)) <= words | {"intermediate.", "output.dense"}
        for n in folded
    ), folded


@pytest.mark.parametrize("case", ["inspect", "inspect-llama", "inspect-kohya", "compress"])
def test_every_naming_scheme_gets_block_headers(case: str, llama: tuple[Path, Path]) -> None:
    text = render(cases(llama)[case], 160)
    blocks = {
        "inspect": " encoder.layer.0.",
        "inspect-llama": " layers.0.",
        "inspect-kohya": " unet_down_blocks_0_attentions_0_transformer_blocks_0_",
        "compress": " encoder.layer.0.",
    }
    assert blocks[case] in text.split("\n"), text


def test_titles_are_whole_when_there_is_room(llama: tuple[Path, Path]) -> None:
    text = render(cases(llama)["compare"], 160)
    first = text.split("\n")[0]
    assert first.startswith(str(SAMPLES / "minilm-r16")) and first.endswith("bert.")
