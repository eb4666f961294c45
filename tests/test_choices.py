"""The enumerated choices (device, method, input format): one definition, checked where used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
from check_adapters import write_lean

import lora_audit
from lora_audit import choices
from lora_audit.cli import _options
from lora_audit.engine.device import EngineOptions
from lora_audit.errors import UsageError
from lora_audit.formats import INPUT_FORMATS, load_adapter

PAIRS = [
    (choices.Device, choices.DeviceName, choices.device_name),
    (choices.Method, choices.MethodName, choices.method_name),
    (choices.InputFormat, choices.InputFormatName, choices.input_format_name),
    (choices.ExtractFormat, choices.ExtractFormatName, choices.extract_format_name),
]


@pytest.mark.parametrize(("enum", "literal", "check"), PAIRS)
def test_each_enum_is_its_literal_and_the_check_accepts_both(
    enum: type, literal: object, check: object
) -> None:
    assert [m.value for m in enum] == list(get_args(literal))  # type: ignore[attr-defined]
    for member in enum:  # type: ignore[attr-defined]
        for value in (member, member.value):
            got = check(value)  # type: ignore[operator]
            assert got == member.value and type(got) is str  # the plain name, not the member


@pytest.mark.parametrize(("enum", "literal", "check"), PAIRS)
@pytest.mark.parametrize("bad", ["svd", "bogus", "", "CPU", None, 1])
def test_an_unknown_choice_is_a_usage_error(
    enum: type, literal: object, check: object, bad: object
) -> None:
    with pytest.raises(UsageError, match="is not a valid choice") as info:
        check(bad)  # type: ignore[operator]
    assert all(repr(v) in str(info.value) for v in get_args(literal))


def test_the_cli_and_the_formats_use_the_same_choices() -> None:
    assert _options.Device is choices.Device
    assert _options.Method is choices.Method
    assert _options.InputFormat is choices.InputFormat
    assert get_args(choices.InputFormatName) == INPUT_FORMATS


def test_the_engine_refuses_a_method_it_would_run_as_gram_without_fallback() -> None:
    """Before: ``method="svd"`` ran the Gram path with no QR fallback, recorded as "svd"."""
    with pytest.raises(UsageError, match="method='svd'"):
        EngineOptions(method="svd")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="device='gpu'"):
        EngineOptions(device="gpu")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("function", "kwargs", "named"),
    [
        ("inspect", {"method": "svd"}, "method='svd'"),
        ("inspect", {"input_format": "bogus"}, "input_format='bogus'"),
        ("inspect", {"device": "tpu"}, "device='tpu'"),
        ("inspect_many", {"input_format": "bogus"}, "input_format='bogus'"),
        ("check", {"input_format": "bogus"}, "input_format='bogus'"),
        ("check", {"method": "svd"}, "method='svd'"),
        ("compress", {"input_format": "bogus", "dry_run": True, "rank": 1}, "input_format="),
        ("compress", {"method": "svd", "dry_run": True, "rank": 1}, "method='svd'"),
    ],
)
def test_the_api_refuses_unknown_choices(
    tmp_path: Path, function: str, kwargs: dict[str, object], named: str
) -> None:
    """Before: ``input_format="bogus"`` was read as PEFT and ``method="svd"`` as Gram."""
    lean = write_lean(tmp_path / "lean")
    with pytest.raises(UsageError, match=named):
        getattr(lora_audit, function)(lean, **kwargs)


def test_load_adapter_refuses_an_unknown_input_format(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="input_format='bogus'"):
        load_adapter(write_lean(tmp_path / "lean"), input_format="bogus")


def test_the_choices_module_imports_no_numpy() -> None:
    code = "import sys, lora_audit.choices; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
