"""Hostile inputs: each ends in one error line and its exit code, fast and in bounded memory.

Classes (issue 17, sections 3–5): pattern keys that backtrack (ReDoS), configs that are
FIFOs, devices or directories, allocation bombs, parser errors that used to escape as
"unexpected …" (deep nesting, huge integers, huge option values, shape mismatches), and
inputs that used to be accepted (duplicate header keys, non-string metadata, non-finite or
non-positive config numbers, two adapter names in one file, ``--alpha nan``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from hostile.builders import (
    assert_refused,
    peft_dir,
    run_cli,
    tensor,
    write_raw_header,
    write_st,
)
from typer.testing import CliRunner

from lora_audit.cli import app

runner = CliRunner()


class _Result:
    def __init__(self, code: int, stderr: str, seconds: float) -> None:
        self.code, self.stdout, self.stderr, self.seconds = code, "", stderr, seconds


def _hang(signum: int, frame: object) -> None:
    raise TimeoutError("the command hung")


def invoke(args: list[str]) -> Any:
    """Run the CLI in-process (a 10 s alarm stops a hang); the result for assert_refused."""
    start = time.perf_counter()
    previous = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(10)
    try:
        result = runner.invoke(app, args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not isinstance(result.exception, TimeoutError), args
    return _Result(result.exit_code, result.stderr, time.perf_counter() - start)


# --- 3. ReDoS ------------------------------------------------------------------------------

EVIL_KEYS = [r"(a+)+$", r"(x*)*y", r"(a|aa)+$", r"(.*)\1", r".*a.*a.*a.*a.*c", r"(\w+\.)*z"]


@pytest.mark.parametrize("key", EVIL_KEYS)
def test_backtracking_pattern_keys_are_refused_fast(tmp_path: Path, key: str) -> None:
    name = "a" * 60
    adapter = peft_dir(
        tmp_path / "a",
        layers=(name,),
        config={"r": 4, "lora_alpha": 8, "alpha_pattern": {key: 4}},
    )
    run = invoke(["inspect", str(adapter)])
    line = assert_refused(run, words=["alpha_pattern", "refused"])
    assert repr(key)[:20] in line


@pytest.mark.parametrize("key", EVIL_KEYS)
def test_backtracking_keys_are_refused_in_under_a_second(key: str) -> None:
    from lora_audit.errors import InputError
    from lora_audit.formats.config_checks import check_lora_numbers

    start = time.perf_counter()
    with pytest.raises(InputError, match="rank_pattern"):
        check_lora_numbers({"rank_pattern": {key: 4}}, where="cfg")
    assert time.perf_counter() - start < 1.0


def test_backtracking_key_in_lora_adapter_metadata_is_refused(tmp_path: Path) -> None:
    meta = json.dumps({"r": 4, "lora_alpha": 8, "rank_pattern": {"(a+)+$": 4}})
    file = write_st(
        tmp_path / "pytorch_lora_weights.safetensors",
        {
            "transformer.x.lora_A.weight": tensor((4, 6)),
            "transformer.x.lora_B.weight": tensor((8, 4)),
        },
        metadata={"lora_adapter_metadata": meta},
    )
    assert_refused(invoke(["inspect", str(file)]), words=["lora_adapter_metadata", "rank_pattern"])


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(.|a)*b"])
def test_backtracking_plot_layers_is_a_bad_option(tmp_path: Path, pattern: str) -> None:
    pytest.importorskip("matplotlib")
    adapter = peft_dir(tmp_path / "a", layers=("a" * 50,), config={"r": 4, "lora_alpha": 8})
    run = invoke(
        ["inspect", str(adapter), "--plot", str(tmp_path / "p.png"), "--plot-layers", pattern]
    )
    assert_refused(run, code=2, words=["--plot-layers"])
    assert not (tmp_path / "p.png").exists()


def test_polynomial_backtracking_stops_at_the_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    from lora_audit import regex_guard
    from lora_audit.errors import InputError
    from lora_audit.formats import patterns

    monkeypatch.setattr(regex_guard, "MATCH_BUDGET_S", 0.3)
    monkeypatch.setattr(regex_guard, "_spent", [0.0])
    start = time.perf_counter()
    with pytest.raises(InputError, match="took too long"):
        patterns.match_pattern({r".*a.*a.*c": 1}, "a" * 3000)
    assert time.perf_counter() - start < 2.0


# --- 3. FIFOs, devices, directories as configs ---------------------------------------------


def _config_as(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "dev-urandom":
        path.symlink_to("/dev/urandom")
    elif kind == "dev-stdin":
        path.symlink_to("/dev/stdin")
    else:
        path.mkdir()


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "dev-urandom", "directory"])
def test_adapter_config_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    adapter = peft_dir(tmp_path / "a")
    _config_as(kind, adapter / "adapter_config.json")
    run = invoke(["inspect", str(adapter)])
    assert_refused(run, words=["adapter_config.json", "not a regular file"])


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_policy_file_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    adapter = peft_dir(tmp_path / "a", config={"r": 4, "lora_alpha": 8})
    (tmp_path / ".git").mkdir()
    _config_as(kind, tmp_path / "lora-audit.toml")
    run = invoke(["check", str(adapter), "--config", str(tmp_path / "lora-audit.toml")])
    assert_refused(run, words=["lora-audit.toml", "not a regular file"])


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "/dev/urandom", "dir-with-fifo"])
def test_open_base_refuses_fifos_and_devices(tmp_path: Path, target: str) -> None:
    from lora_audit.errors import InputError
    from lora_audit.formats.base_model import open_base

    path = Path(target)
    if target == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    elif target == "dir-with-fifo":
        path = tmp_path / "base"
        path.mkdir()
        os.mkfifo(path / "model.safetensors")
    with pytest.raises(InputError, match=r"FIFO|character device"):
        _alarmed(lambda: open_base(path))


def _alarmed(body: Any) -> Any:
    previous = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(10)
    try:
        return body()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "/dev/urandom"])
def test_base_that_is_a_fifo_or_device_is_refused(tmp_path: Path, target: str) -> None:
    pytest.importorskip("torch")  # without torch, --base is a usage error before it is opened
    adapter = peft_dir(tmp_path / "a", config={"r": 4, "lora_alpha": 8})
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")
    run = invoke(["inspect", str(adapter), "--base", str(tmp_path / target)])
    assert_refused(run, words=["--base", "not a file or directory"])


def test_base_index_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    adapter = peft_dir(tmp_path / "a", config={"r": 4, "lora_alpha": 8})
    (tmp_path / "base").mkdir()
    os.mkfifo(tmp_path / "base" / "model.safetensors.index.json")
    run = invoke(["inspect", str(adapter), "--base", str(tmp_path / "base")])
    assert_refused(run, words=["checkpoint index", "FIFO"])


def test_config_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    adapter = peft_dir(tmp_path / "a")
    with (adapter / "adapter_config.json").open("wb") as fh:
        fh.write(b'{"r": 4, "x": "')
        fh.truncate(17 * 1024 * 1024)
    assert_refused(invoke(["inspect", str(adapter)]), words=["MiB limit"])


# --- 3. Allocation bombs -------------------------------------------------------------------

BOMBS: dict[str, dict[str, tuple[int, ...]]] = {
    "lokr": {"lokr_w1": (1, 1000), "lokr_w2_a": (1000, 100), "lokr_w2_b": (100, 1000)},
    "tucker": {
        "lora_down.weight": (1, 20000),
        "lora_mid.weight": (1, 1, 300, 300),
        "lora_up.weight": (4, 1),
    },
    "loha": {
        "hada_w1_a": (1, 1000),
        "hada_w1_b": (1000, 1),
        "hada_w2_a": (1, 1000),
        "hada_w2_b": (1000, 1),
    },
    "kron": {"lokr_w1": (100, 100), "lokr_w2": (300, 300)},
}


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_small_file_that_asks_for_a_huge_allocation_is_refused(tmp_path: Path, kind: str) -> None:
    file = write_st(
        tmp_path / f"{kind}.safetensors",
        {f"lora_unet_x.{role}": tensor(shape) for role, shape in BOMBS[kind].items()},
    )
    assert file.stat().st_size < 4 << 20
    run = invoke(["inspect", str(file)])  # refused before anything is allocated
    assert_refused(run, words=["lora_unet_x", "bounded memory"])


def test_rank_far_above_the_layer_size_is_refused(tmp_path: Path) -> None:
    adapter = peft_dir(tmp_path / "a", rank=20000, layers=("x",))
    run = run_cli(["inspect", str(adapter)], cwd=tmp_path)  # under a 1.5 GiB address space
    assert_refused(run, words=["'x'", "inner rank 20000", "bounded memory"])


def test_lokr_bomb_in_bounded_memory_and_the_policy_search_finds_a_fifo(tmp_path: Path) -> None:
    """Two end-to-end runs in a subprocess: a memory limit, and a FIFO found by the search."""
    file = write_st(
        tmp_path / "lokr.safetensors",
        {f"lora_unet_x.{role}": tensor(shape) for role, shape in BOMBS["lokr"].items()},
    )
    assert_refused(run_cli(["inspect", str(file)], cwd=tmp_path), words=["bounded memory"])
    (tmp_path / ".git").mkdir()
    os.mkfifo(tmp_path / "lora-audit.toml")
    adapter = peft_dir(tmp_path / "a", config={"r": 4, "lora_alpha": 8})
    run = run_cli(["check", str(adapter)], cwd=tmp_path)
    assert_refused(run, words=["lora-audit.toml", "FIFO"])
    (tmp_path / "lora-audit.toml").unlink()  # every command reads it: out of the next run's way
    (adapter / "adapter_config.json").unlink()
    _config_as("dev-stdin", adapter / "adapter_config.json")  # stdin is a pipe here
    run = run_cli(["inspect", str(adapter)], cwd=tmp_path, stdin=subprocess.PIPE)
    assert_refused(run, words=["adapter_config.json", "not a regular file"])


def test_the_work_estimate_covers_the_thin_factors_and_grams() -> None:
    from lora_audit.adapter import LayerKind, LoraLayer
    from lora_audit.formats.work_bounds import layer_work_bytes, work_budget

    layer = LoraLayer(
        name="x", kind=LayerKind.LINEAR, a_key="a", b_key="b", a_shape=(16, 384),
        b_shape=(384, 16), out_features=384, in_features=384, rank=16, alpha=32.0,
        scale=2.0, dtype="F32", weight_shape=(384, 384),
    )  # fmt: skip
    work = layer_work_bytes(layer, {})
    assert work >= 8 * 16 * (384 + 384) + 8 * 16 * 16  # B, A in float64 and a Gram
    assert work < work_budget(2 * 16 * 768)  # a real layer fits in the budget of its own bytes


def test_lokr_inner_shape_mismatch_is_one_line(tmp_path: Path) -> None:
    file = write_st(
        tmp_path / "lokr.safetensors",
        {
            "lora_unet_x.lokr_w1_a": tensor((4, 2)),
            "lora_unet_x.lokr_w1_b": tensor((3, 4)),
            "lora_unet_x.lokr_w2": tensor((8, 8)),
        },
    )
    assert_refused(invoke(["inspect", str(file)]), words=["w1_a [4, 2]", "w1_b [3, 4]"])


# --- 4. Parser errors that used to escape ------------------------------------------------

DEEP = "[" * 10000 + "]" * 10000
BIG_INT = "1" * 5000


@pytest.mark.parametrize("text", [f'{{"r": 4, "x": {DEEP}}}', f'{{"r": {BIG_INT}}}'])
def test_deep_or_huge_json_config_is_refused(tmp_path: Path, text: str) -> None:
    adapter = peft_dir(tmp_path / "a", config=text)
    assert_refused(invoke(["inspect", str(adapter)]), words=["adapter_config.json"])


@pytest.mark.parametrize(
    "header",
    [
        '{"__metadata__": {"x": "y"}, "deep": ' + DEEP + "}",
        '{"t": {"dtype": "F32", "shape": [' + BIG_INT + '], "data_offsets": [0, 0]}}',
    ],
)
def test_deep_or_huge_json_header_is_refused(tmp_path: Path, header: str) -> None:
    file = write_raw_header(tmp_path / "x.safetensors", header)
    assert_refused(invoke(["inspect", str(file)]), words=["x.safetensors"])


@pytest.mark.parametrize("text", [DEEP, f'{{"weight_map": {{"a": {BIG_INT}}}}}'])
def test_deep_or_huge_base_index_is_refused(tmp_path: Path, text: str) -> None:
    pytest.importorskip("torch")
    adapter = peft_dir(tmp_path / "a", config={"r": 4, "lora_alpha": 8})
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "model.safetensors.index.json").write_text(text)
    run = invoke(["inspect", str(adapter), "--base", str(tmp_path / "base")])
    assert_refused(run, words=["model.safetensors.index.json"])


@pytest.mark.parametrize("text", ["x = " + "[" * 5000 + "]" * 5000, f"energy = {BIG_INT}"])
def test_deep_or_huge_policy_file_is_refused(tmp_path: Path, text: str) -> None:
    adapter = peft_dir(tmp_path / "a", config={"r": 4, "lora_alpha": 8})
    policy = tmp_path / "lora-audit.toml"
    policy.write_text(text)
    assert_refused(
        invoke(["check", str(adapter), "--config", str(policy)]), words=["lora-audit.toml"]
    )


def test_policy_integer_too_large_for_a_float_is_judged_not_crashed(tmp_path: Path) -> None:
    adapter = peft_dir(tmp_path / "a", config={"r": 4, "lora_alpha": 8})
    policy = tmp_path / "lora-audit.toml"
    policy.write_text(f"min-rank-used = {'9' * 400}\n")
    for args in (["--config", str(policy)], ["--no-config", "--min-rank-used", "9" * 400]):
        run = invoke(["check", str(adapter), "-f", "json", *args])
        assert run.code == 1, run.stderr  # every layer is below that minimum: a finding
        assert "unexpected" not in run.stderr


@pytest.mark.parametrize("budget", ["9" * 400, "1" + "0" * 320 + "k"])
def test_huge_budget_is_a_bad_option(tmp_path: Path, budget: str) -> None:
    adapter = peft_dir(tmp_path / "a", config={"r": 4, "lora_alpha": 8})
    run = invoke(["compress", str(adapter), "-o", str(tmp_path / "out"), "--budget", budget])
    assert_refused(run, code=2, words=["--budget"])
    assert not (tmp_path / "out").exists()


# --- 5. Inputs that used to be accepted ----------------------------------------------------


def test_duplicate_tensor_names_in_the_header_are_refused(tmp_path: Path) -> None:
    entry = '{"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}'
    header = (
        f'{{"base_model.model.x.lora_A.weight": {entry}, '
        f'"base_model.model.x.lora_B.weight": {entry.replace("0, 4", "4, 8")}, '
        f'"base_model.model.x.lora_B.weight": {entry.replace("0, 4", "8, 12")}}}'
    )
    file = write_raw_header(tmp_path / "dup.safetensors", header, data=b"\0" * 12)
    assert_refused(invoke(["inspect", str(file)]), words=["lora_B.weight", "twice"])


@pytest.mark.parametrize("value", ["0", "false", "1", "null", "[]"])
def test_non_string_metadata_values_are_refused(tmp_path: Path, value: str) -> None:
    header = '{"__metadata__": {"k": ' + value + "}}"
    file = write_raw_header(tmp_path / "m.safetensors", header)
    assert_refused(invoke(["inspect", str(file)]), words=["__metadata__"])


@pytest.mark.parametrize("value", ["0", "false", "[]", '"x"'])
def test_metadata_that_is_not_an_object_is_refused(tmp_path: Path, value: str) -> None:
    file = write_raw_header(tmp_path / "m.safetensors", '{"__metadata__": ' + value + "}")
    assert_refused(invoke(["inspect", str(file)]), words=["__metadata__"])


FIELDS = ("lora_alpha", "r", "alpha_pattern", "rank_pattern")
BAD_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e309", "0", "true"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *(
            (field, value)
            for field in FIELDS
            for value in BAD_NUMBERS
            # an alpha of 0 is read (PEFT loads it: ΔW = 0), with a warning: test_contradictions
            if not (value == "0" and "alpha" in field)
        ),
        ("r", "-2"),
        ("rank_pattern", "-2"),
        ("r", "2.5"),
        ("rank_pattern", '"4"'),
    ],
)
def test_non_finite_or_non_positive_config_numbers_are_refused(
    tmp_path: Path, field: str, value: str
) -> None:
    name = "model.layers.0.q_proj"
    fields = {"r": "4", "lora_alpha": "8"}
    if field in fields:
        fields[field] = value
    else:
        fields[field] = '{"q_proj": ' + value + "}"
    text = "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"
    adapter = peft_dir(tmp_path / "a", config=text, layers=(name,))
    for command in (["inspect"], ["check", "--no-config"]):
        line = assert_refused(invoke([*command, str(adapter)]), words=[field])
        assert "warning" not in line.lower()
    run = invoke(["compress", str(adapter), "-o", str(tmp_path / "out"), "--rank", "2"])
    assert_refused(run, words=[field])
    assert not (tmp_path / "out").exists()


def test_two_adapter_names_in_one_file_are_refused(tmp_path: Path) -> None:
    file = write_st(
        tmp_path / "a" / "adapter_model.safetensors",
        {
            "base_model.model.x.lora_A.default.weight": tensor((4, 6)),
            "base_model.model.x.lora_B.default.weight": tensor((8, 4)),
            "base_model.model.y.lora_A.other.weight": tensor((4, 6)),
            "base_model.model.y.lora_B.other.weight": tensor((8, 4)),
        },
    )
    assert_refused(invoke(["inspect", str(file.parent)]), words=["'default'", "'other'"])


def test_named_and_unnamed_factors_in_one_file_are_refused(tmp_path: Path) -> None:
    file = write_st(
        tmp_path / "a" / "adapter_model.safetensors",
        {
            "base_model.model.x.lora_A.weight": tensor((4, 6)),
            "base_model.model.x.lora_B.weight": tensor((8, 4)),
            "base_model.model.y.lora_A.other.weight": tensor((4, 6)),
            "base_model.model.y.lora_B.other.weight": tensor((8, 4)),
        },
    )
    assert_refused(invoke(["inspect", str(file.parent)]), words=["'other'", "two adapter names"])


@pytest.mark.parametrize("alpha", ["nan", "inf", "-inf", "0", "1e400"])
def test_bad_alpha_option_exits_2(tmp_path: Path, alpha: str) -> None:
    adapter = peft_dir(tmp_path / "a")
    result = runner.invoke(app, ["inspect", str(adapter), "--alpha", alpha])
    assert result.exit_code == 2, result.stderr
    assert "--alpha" in result.stderr and "Traceback" not in result.stderr
