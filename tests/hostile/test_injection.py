"""Hostile names, paths and metadata: nothing from a file reaches any output unescaped.

Adapters are written by hand in ``tmp_path`` (safetensors is a length, a JSON header and the
data), so their tensor names, directory names and metadata values carry terminal escapes, bidi
overrides, line separators, rich markup, GitHub workflow commands, HTML and mathtext; every
command and output format then runs on them through the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.render import escape
from lora_audit.report import ToolInfo

runner = CliRunner()

#: One payload per kind of attack (each becomes part of a module name and a metadata value).
PAYLOADS = {
    "clear": "\x1b[2J\x1b[H",
    "colour": "\x1b[31mred\x1b[0m",
    "osc8": "\x1b]8;;http://evil\x07click\x1b]8;;\x07",
    "osc52": "\x1b]52;c;ZXZpbA==\x07",
    "nul_bel_del": "a\x00b\x07c\x7f",
    "c1": "\x9b31m\x85::warning::nel",
    "bidi": "\u202eevil\u202c\u2066x\u2069",
    "ls_ps": "\u2028::warning::ls\u2029::error::ps",
    "cr": "\r::error title=spoof::pwned",
    "lf": "\n::add-mask::secret",
    "markup": "[/oops][link=http://evil]x[/link][bold red]",
    "html": "<img src=x onerror=alert(1)><details><h2>✅ PASS</h2>",
    "markdown": "a|b`c`*d*[e](f)&amp;$x$",
    "mathtext": "$\\frac{$",
    "zero_width": "z\u200bw\ufeff",
}
SURROGATE = "s\ud800x"

#: Categories never allowed raw in any output (besides the line feeds that end lines).
FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}
OWN_TAGS = re.compile(r"</?(br|details|summary|sub|code)>")


def write_safetensors(
    path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """A safetensors file written by hand (names may hold anything JSON can: ``\\ud800``)."""
    header: dict[str, object] = {}
    blobs, offset = [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, ensure_ascii=True).encode("ascii")
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def _factors(seed: int, *, trained: bool = True) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    b = gen.standard_normal((6, 4)) * (1.0 if trained else 0.0)
    a = gen.standard_normal((4, 5))
    b[:, 2:] *= 1e-6  # wasteful: two of the four directions are (almost) empty
    return b, a


def write_peft(directory: Path, payloads: dict[str, str], *, seed: int = 0) -> Path:
    """A PEFT adapter whose module names (and config's base model) carry the payloads."""
    tensors = {}
    for i, (kind, payload) in enumerate(payloads.items()):
        b, a = _factors(seed + i, trained=i != 0)
        prefix = f"base_model.model.layers.{i}.{kind}{payload}proj"
        tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"] = a, b
    write_safetensors(directory / "adapter_model.safetensors", tensors, {"format": "pt"})
    config = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "base_model_name_or_path": "".join(payloads.values()),
    }
    (directory / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def write_kohya(path: Path, payloads: dict[str, str]) -> Path:
    """A kohya file whose module names and ``ss_*`` metadata values carry the payloads."""
    tensors: dict[str, np.ndarray] = {}
    for i, (kind, payload) in enumerate(payloads.items()):
        b, a = _factors(100 + i)
        module = f"lora_unet_block_{i}_{kind}{payload}"
        tensors[f"{module}.lora_down.weight"], tensors[f"{module}.lora_up.weight"] = a, b
        tensors[f"{module}.alpha"] = np.array(2.0)
    every = "".join(payloads.values())
    metadata = {"ss_sd_model_name": every, "ss_output_name": every, "ss_training_comment": every}
    write_safetensors(path, tensors, metadata)
    return path


def hostile_dir(root: Path, name: str) -> Path:
    """A directory whose name carries payloads too (no ``/`` or NUL: the file system's rule)."""
    return root / (name + "\x1b[2J\u202e<b>[red]\r::error::d")


@pytest.fixture
def adapters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    (tmp_path / ".git").mkdir()  # no policy file from outside
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    peft = write_peft(hostile_dir(tmp_path, "peft"), PAYLOADS)
    kohya = write_kohya(hostile_dir(tmp_path, "kohya") / "lora.safetensors", PAYLOADS)
    broken = hostile_dir(tmp_path, "broken")
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes(b"\x00\x01")
    run = hostile_dir(tmp_path, "run")
    for step in (10, 20, 30):
        write_peft(run / f"checkpoint-{step}", PAYLOADS, seed=step)
    return {"peft": peft, "kohya": kohya, "broken": broken, "run": run, "tmp": tmp_path}


def invoke(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def forbidden(text: str) -> list[str]:
    """Characters that must never be written raw (line feeds aside)."""
    return sorted(
        {c for c in text if c != "\n" and unicodedata.category(c) in FORBIDDEN_CATEGORIES}
    )


def assert_clean(out: str, err: str, *, own_annotations: bool = False) -> None:
    """No raw control/bidi/separator character; stderr lines are the tool's own."""
    assert forbidden(out) == [], out
    assert forbidden(err) == [], err
    for line in err.splitlines():
        assert line.startswith("lora-audit: "), line
    for line in out.splitlines():
        if own_annotations:
            assert line.startswith(("::error ", "::warning ", "::notice ")), line
        else:
            assert not line.startswith("::"), line


def assert_visible(text: str) -> None:
    """The payloads are shown as escapes, and markup as written."""
    assert "\\x1b" in text
    assert "\\u202e" in text


# --- inspect -----------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["peft", "kohya"])
def test_inspect_table(adapters: dict[str, Path], which: str) -> None:
    code, out, err = invoke("inspect", adapters[which], "--device", "cpu")
    assert code == 0, err
    assert_clean(out, err)
    assert_visible(out)
    assert "[/oops]" in out and "[link=http://evil]" in out  # printed, never parsed


@pytest.mark.parametrize("which", ["peft", "kohya"])
def test_inspect_json_keeps_the_raw_names(adapters: dict[str, Path], which: str) -> None:
    code, out, err = invoke("inspect", adapters[which], "--device", "cpu", "-f", "json")
    assert code == 0, err
    assert_clean(out, err)
    names = " ".join(layer["name"] for layer in json.loads(out)["layers"])
    assert PAYLOADS["clear"] in names and PAYLOADS["bidi"] in names  # the report is not altered


@pytest.mark.parametrize("which", ["peft", "kohya"])
def test_inspect_markdown(adapters: dict[str, Path], which: str) -> None:
    code, out, err = invoke("inspect", adapters[which], "--device", "cpu", "-f", "markdown")
    assert code == 0, err
    assert_clean(out, err)
    assert_markdown_safe(out)


def assert_markdown_safe(text: str) -> None:
    """No HTML but the renderer's own tags; every table row keeps its column count."""
    assert "<" not in OWN_TAGS.sub("", text), text
    assert ">" not in OWN_TAGS.sub("", text).replace("→", "")
    assert "&lt;img" in text
    tables: dict[int, int] = {}
    for line in text.splitlines():
        if line.startswith("| "):
            cells = len(re.findall(r"(?<!\\)\|", line))
            tables.setdefault(cells, 0)
            tables[cells] += 1
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            assert len(re.findall(r"(?<!\\)\|", line)) in tables


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_inspect_plot(adapters: dict[str, Path], suffix: str) -> None:
    picture = adapters["tmp"] / f"inspect.{suffix}"
    code, out, err = invoke("inspect", adapters["kohya"], "--device", "cpu", "--plot", picture)
    assert code == 0, err
    assert_clean(out, err)
    data = picture.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == "png" else b"<svg" in data
    if suffix == "svg":
        ET.fromstring(data)  # fonttype "path": labels are outlines, the file is well formed


# --- check -------------------------------------------------------------------------------------
def check(adapters: dict[str, Path], fmt: str) -> tuple[int, str, str]:
    return invoke(
        "check", adapters["peft"], adapters["kohya"], adapters["broken"],
        "--device", "cpu", "--max-waste", "0.1", "--max-layer-waste", "0.4", "-f", fmt,
    )  # fmt: skip


def test_check_table(adapters: dict[str, Path]) -> None:
    code, out, err = check(adapters, "table")
    assert code == 3, err  # an unreadable adapter is the worst outcome
    assert_clean(out, err)
    assert_visible(out)
    assert err.startswith("lora-audit: ") and err.count("\\r::error::d") == len(err.splitlines())


def test_check_github(adapters: dict[str, Path]) -> None:
    code, out, err = check(adapters, "github")
    assert code == 3
    assert_clean(out, err, own_annotations=True)
    assert "%0D::error title=spoof::pwned" in out.replace("%3A", ":")  # the CR, %-escaped
    assert "%0A::add-mask::secret" in out.replace("%3A", ":")
    assert "\\x85::warning::nel" in out and "\\u2028::warning::ls" in out
    for line in out.splitlines():
        head, _, properties = line.partition(" ")
        props = properties.split("::", 1)[0]
        assert ":" not in props.replace("::", "")  # properties: ":" and "," %-escaped
        assert re.fullmatch(r"::(error|warning|notice)", head)
    assert all(re.fullmatch(r"%(25|0D|0A|3A|2C)", m) for m in re.findall(r"%..", out))


def test_check_markdown(adapters: dict[str, Path]) -> None:
    code, out, err = check(adapters, "markdown")
    assert code == 3
    assert_clean(out, err)
    assert_markdown_safe(out)
    assert "<h2>" not in out and "\\[/oops\\]" in out


def test_check_junit(adapters: dict[str, Path]) -> None:
    code, out, err = check(adapters, "junit")
    assert code == 3
    assert_clean(out, err)
    root = ET.fromstring(out.encode("utf-8"))
    suites = root.findall("testsuite")
    assert len(suites) == 3
    assert root.findall(".//failure") and root.findall(".//error")
    assert any("\\x1b[2J" in (s.get("name") or "") for s in suites)


def test_check_json(adapters: dict[str, Path]) -> None:
    code, out, err = check(adapters, "json")
    assert code == 3
    assert_clean(out, err)
    report = json.loads(out)
    assert any(PAYLOADS["cr"] in (f["layer"] or "") for f in report["findings"])


def test_check_writes_clean_files(adapters: dict[str, Path]) -> None:
    for fmt in ("table", "markdown", "github", "junit", "json"):
        target = adapters["tmp"] / f"report.{fmt}"
        code, out, err = invoke(
            "check", adapters["peft"], "--device", "cpu", "--max-waste", "0.1",
            "-f", fmt, "-o", target,
        )  # fmt: skip
        assert code == 1, err
        text = target.read_text("utf-8")
        assert forbidden(text) == [], (fmt, text)
        assert out == ""


# --- compress --dry-run, trend, compare --------------------------------------------------------
@pytest.mark.parametrize("fmt", ["table", "json"])
def test_compress_dry_run(adapters: dict[str, Path], fmt: str) -> None:
    target = adapters["tmp"] / "out"
    for source in (adapters["peft"], adapters["kohya"]):
        code, out, err = invoke(
            "compress", source, "-o", target, "--dry-run", "--energy", "0.99",
            "--device", "cpu", "-f", fmt,
        )  # fmt: skip
        assert code == 0, err
        assert_clean(out, err)
        if fmt == "json":
            json.loads(out)
        else:
            assert_visible(out)
    assert not target.exists()


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_trend(adapters: dict[str, Path], fmt: str) -> None:
    picture = adapters["tmp"] / "trend.png"
    plot = ("--plot", picture) if fmt == "table" else ()
    code, out, err = invoke("trend", adapters["run"], "-f", fmt, *plot)
    assert code == 0, err
    assert_clean(out, err)
    assert fmt != "table" or picture.read_bytes().startswith(b"\x89PNG")
    if fmt == "json":
        assert len(json.loads(out)["checkpoints"]) == 3
    else:
        assert_visible(out)


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_compare(adapters: dict[str, Path], fmt: str) -> None:
    picture = adapters["tmp"] / "compare.svg"
    a, b = adapters["run"] / "checkpoint-10", adapters["run"] / "checkpoint-30"
    plot = ("--plot", picture) if fmt == "table" else ()
    code, out, err = invoke("compare", a, b, "-f", fmt, *plot)
    assert code == 0, err
    assert_clean(out, err)
    assert fmt != "table" or ET.fromstring(picture.read_bytes()) is not None
    if fmt == "json":
        assert len(json.loads(out)["layers"]) == len(PAYLOADS)
    else:
        assert_visible(out)
        assert "[/oops]" in out


# --- lone surrogates, and every payload in every renderer ----------------------------------------
def test_lone_surrogates_through_the_cli(tmp_path: Path) -> None:
    """Names holding a lone surrogate (``"\\ud800"`` in the header's JSON) are read and shown
    escaped; the JSON keeps them (as ``\\ud800``)."""
    peft = write_peft(tmp_path / "peft", {"s": SURROGATE, "plain": ""})
    kohya = write_kohya(tmp_path / "k.safetensors", {"s": SURROGATE, "plain": ""})
    runs = [
        (fmt, invoke("inspect", source, "--device", "cpu", "-f", fmt))
        for fmt in ("table", "json", "markdown")
        for source in (peft, kohya)
    ]
    runs += [
        (fmt, invoke("check", peft, kohya, "--max-layer-waste", "0.4", "-f", fmt))
        for fmt in ("github", "junit", "markdown", "table")
    ]
    for fmt, (code, out, err) in runs:
        assert code in (0, 1), (fmt, err)
        assert_clean(out, err, own_annotations=fmt == "github")
        out.encode("utf-8")  # valid UTF-8 (a lone surrogate is not)
        if fmt == "json":
            assert any(SURROGATE in layer["name"] for layer in json.loads(out)["layers"])
        else:
            assert "\\ud800" in out, (fmt, out)
        if fmt == "junit":
            assert ET.fromstring(out.encode("utf-8")).findall(".//failure")
    picture = tmp_path / "s.png"
    code, _, err = invoke("inspect", peft, "--device", "cpu", "--plot", picture)
    assert code == 0, err
    assert picture.read_bytes().startswith(b"\x89PNG")


#: Report fields that hold text from files or file names.
HOSTILE_FIELDS = {"name", "path", "tensor_file", "layer", "adapter", "message", "fix"}


def poison(value: Any, payload: str) -> Any:
    """``value`` (a report) with ``payload`` appended to every name, path and message."""
    if isinstance(value, ToolInfo):  # the tool's own name
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in dataclasses.fields(value):
            old = getattr(value, f.name)
            if f.name in HOSTILE_FIELDS and isinstance(old, str):
                changes[f.name] = old + payload
            elif f.init:
                changes[f.name] = poison(old, payload)
        return dataclasses.replace(value, **changes)
    if isinstance(value, list | tuple):
        return type(value)(poison(v, payload) for v in value)
    return value


def strings(data: Any) -> Iterator[str]:
    """Every string in parsed JSON."""
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for value in data.values():
            yield from strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from strings(value)


@pytest.mark.parametrize("payload", [*PAYLOADS.values(), SURROGATE], ids=[*PAYLOADS, "surrogate"])
def test_every_renderer_escapes_every_payload(payload: str) -> None:
    from reports import lean_report, wasteful_report

    from lora_audit.commands.check import assemble
    from lora_audit.decisions.check_rules import Policy
    from lora_audit.render import OutputFormat, formats_for, render
    from lora_audit.render.plot import render_plot
    from lora_audit.report import AdapterError

    inspect = poison(wasteful_report(), payload)
    check = poison(
        assemble(
            reports=[lean_report(), wasteful_report()],
            errors=[AdapterError(path="adapters/broken", message="bad file")],
            policy=Policy(),
            policy_file="pyproject.toml",
        ),
        payload,
    )
    assert payload in inspect.layers[0].name and check.findings
    for report in (inspect, check):
        for fmt in formats_for(report.kind):
            text = render(report, fmt)
            assert forbidden(text) == [], (fmt, text)
            text.encode("utf-8")
            lines = text.splitlines()
            if fmt is OutputFormat.GITHUB:
                assert all(line.startswith(("::error ", "::notice ")) for line in lines)
                assert len(lines) == len(check.findings) + len(check.errors) + 1
            else:
                assert not any(line.startswith("::") for line in lines)
            if fmt is OutputFormat.MARKDOWN:
                assert "<" not in OWN_TAGS.sub("", text)
            if fmt is OutputFormat.JUNIT:
                ET.fromstring(text.encode("utf-8"))
            if fmt is OutputFormat.JSON:
                assert any(payload in t for t in strings(json.loads(text)))  # kept raw
    if payload in (PAYLOADS["mathtext"], PAYLOADS["bidi"], PAYLOADS["markup"], SURROGATE):
        assert render_plot(inspect, fmt="png").startswith(b"\x89PNG")


@pytest.fixture(scope="module")
def trend_and_compare() -> tuple[Any, Any]:
    """Real trend and compare reports of the bundled samples (poisoned per test)."""
    from lora_audit.commands.compare import compare_adapters
    from lora_audit.commands.trend import TrendOptions, trend_of
    from lora_audit.formats import load_adapter

    samples = Path(__file__).resolve().parents[2] / "sample_adapters"
    run = [samples / "minilm-run" / f"checkpoint-{s}" for s in (10, 20, 40, 80)]
    trend = trend_of([load_adapter(p) for p in run], options=TrendOptions())
    compare = compare_adapters(
        load_adapter(samples / "minilm-r16"), load_adapter(samples / "minilm-r4-bf16"), top_k=4
    )
    return trend, compare


@pytest.mark.parametrize("payload", [*PAYLOADS.values(), SURROGATE], ids=[*PAYLOADS, "surrogate"])
def test_trend_and_compare_renderers_escape_every_payload(
    payload: str, trend_and_compare: tuple[Any, Any]
) -> None:
    from lora_audit.render import OutputFormat, formats_for, render

    for clean in trend_and_compare:
        report = poison(clean, payload)
        assert report.layers and payload in report.layers[0].name
        for fmt in formats_for(report.kind):
            text = render(report, fmt)
            assert forbidden(text) == [], (report.kind, fmt, text)
            text.encode("utf-8")
            lines = text.splitlines()
            if fmt is OutputFormat.GITHUB:
                assert all(
                    line.startswith(("::warning ", "::notice ", "::error ")) for line in lines
                )
                assert len(lines) == len(render(clean, fmt).splitlines())
            else:
                assert not any(line.startswith("::") for line in lines)
            if fmt is OutputFormat.MARKDOWN:
                assert "<" not in OWN_TAGS.sub("", text)
                assert len(lines) == len(render(clean, fmt).splitlines())


# --- errors and warnings -----------------------------------------------------------------------
def test_an_error_naming_a_hostile_path_is_one_clean_line(adapters: dict[str, Path]) -> None:
    code, out, err = invoke("inspect", adapters["broken"], "--device", "cpu")
    assert code == 3
    assert out == ""
    assert_clean(out, err)
    assert len(err.splitlines()) == 1
    assert "\\r::error::d" in err  # the directory's CR, visible


def test_a_warning_naming_a_hostile_tensor_is_one_clean_line(tmp_path: Path) -> None:
    """A kohya file without alpha gets a warning on stderr that names modules."""
    tensors = {}
    for kind, payload in PAYLOADS.items():
        b, a = _factors(7)
        module = f"lora_unet_{kind}{payload}"
        tensors[f"{module}.lora_down.weight"], tensors[f"{module}.lora_up.weight"] = a, b
    tensors["lora_unet_x\r::error::w\u2028::warning::v.lora_down.weight"] = np.ones((2, 3))
    write_safetensors(tmp_path / "k.safetensors", tensors, {"ss_network_alpha": "\r::error::m"})
    code, out, err = invoke("inspect", tmp_path / "k.safetensors", "--device", "cpu")
    assert code in (0, 3), err
    assert err, "expected a warning or an error"
    assert_clean(out, err)


# --- each escaper, for any text ----------------------------------------------------------------


#: Any code point, lone surrogates included, with the dangerous ones made likely.
HOSTILE_CHARS = st.one_of(
    st.characters(codec=None, exclude_categories=()),
    st.sampled_from(
        "\x00\x07\x1b\x7f\x85\x9b\u200b\u200e\u202e\u2066\u2028\u2029\ufeff\ud800\udfff\ufffe"
        "\r\n\t%:,[]/\\`*_|<>&$~#!()"
    ),
)
TEXT = st.text(HOSTILE_CHARS, max_size=40)
#: XML 1.0's Char production.
XML_CHAR = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")


@given(TEXT)
@settings(max_examples=200, deadline=None)
def test_for_terminal_writes_no_control_character(text: str) -> None:
    out = escape.for_terminal(text)
    assert not [c for c in out if unicodedata.category(c) in FORBIDDEN_CATEGORIES | {"Cn"}]
    assert "\n" not in out and "\r" not in out
    out.encode("utf-8")
    assert escape.for_terminal(out) == out  # idempotent: escaping twice changes nothing
    if all(unicodedata.category(c) not in escape.UNSAFE_CATEGORIES for c in text):
        assert out == text  # safe text is left as it is


@given(TEXT)
@settings(max_examples=200, deadline=None)
def test_for_rich_renders_as_the_terminal_text(text: str) -> None:
    from rich.markup import render

    out = escape.for_rich(text)
    safe = escape.for_terminal(text)
    assert render(out).plain == safe  # markup from the text never applies
    assert render(f"[bold]{out} [/bold][link=x]y[/link]").plain == f"{safe} y"
    assert render(f"[b]x[/b]{out}").plain == f"x{safe}"


@given(TEXT)
@settings(max_examples=200, deadline=None)
def test_for_github_keeps_a_command_on_one_line(text: str) -> None:
    data, prop = escape.for_github_data(text), escape.for_github_property(text)
    for out in (data, prop):
        assert not set(out) & {"\r", "\n", "\x85", "\u2028", "\u2029", "\x0b", "\x0c"}
        assert not forbidden(out)
        assert re.fullmatch(r"(?:[^%]|%25|%0D|%0A|%3A|%2C)*", out)
    assert ":" not in prop and "," not in prop
    command = f"::warning title={prop}::{data}"
    assert command.count("::") == 2 + data.count("::")  # the properties hold no "::"
    assert len(command.splitlines()) == 1


@given(TEXT)
@settings(max_examples=200, deadline=None)
def test_for_markdown_renders_as_the_text(text: str) -> None:
    from markdown_it import MarkdownIt

    out = escape.for_markdown(text)
    assert not set(out) & set("<>") and not forbidden(out)
    assert re.search(r"(?<!\\)(?:\\\\)*[|`]", out) is None  # every | and ` escaped
    html = MarkdownIt("commonmark").render("x " + out + " x")
    assert html.startswith("<p>") and html.count("<") == 2  # one paragraph: no tag, link, code
    import html as html_module

    shown = html_module.unescape(html[len("<p>") : -len("</p>\n")])
    assert shown == "x " + escape.for_terminal(text) + " x"


@given(TEXT)
@settings(max_examples=200, deadline=None)
def test_markdown_code_renders_as_the_text(text: str) -> None:
    import html as html_module

    from markdown_it import MarkdownIt

    from lora_audit.render.markdown import code

    out = code(text)
    html = MarkdownIt("commonmark").render(f"x {out} x")
    inner = html.removeprefix("<p>x <code>").removesuffix("</code> x</p>\n")
    assert inner != html and "<" not in inner  # one code element, nothing else
    assert html_module.unescape(inner) == escape.for_terminal(text)


@given(TEXT)
@settings(max_examples=200, deadline=None)
def test_for_xml_survives_a_round_trip(text: str) -> None:
    out = escape.for_xml(text)
    assert XML_CHAR.fullmatch(out) and not forbidden(out)
    element = ET.Element("e", {"a": out})
    element.text = out
    back = ET.fromstring(ET.tostring(element, encoding="unicode"))
    assert (back.text or "") == out and back.get("a") == out


@given(TEXT)
@settings(max_examples=100, deadline=None)
def test_for_plot_is_drawable(text: str) -> None:
    out = escape.for_plot(text)
    assert not forbidden(out)
    out.encode("utf-8")
