"""Pictures: valid PNG/SVG files of the documented size, drawn only from finished reports."""

from __future__ import annotations

import builtins
import struct
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.errors import UsageError

pytest.importorskip("matplotlib")

from lora_audit.render.plot import (
    COMPARE_SIZE,
    DPI,
    INSPECT_SIZE,
    TREND_SIZE,
    compare_size,
    inspect_size,
    render_plot,
)

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parents[2] / "sample_adapters"
RUN = SAMPLES / "minilm-run"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG signature and IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def decoded_shape(path: Path) -> tuple[int, ...]:
    """Decode the whole image (matplotlib's reader) and return its array shape."""
    import matplotlib.image

    return tuple(matplotlib.image.imread(str(path)).shape)


def pixels(size: tuple[float, float]) -> tuple[int, int]:
    return round(size[0] * DPI), round(size[1] * DPI)


@pytest.fixture(scope="module")
def inspect_report() -> Any:
    from lora_audit.commands.inspect import AuditOptions, inspect_adapter
    from lora_audit.formats import load_adapter

    return inspect_adapter(load_adapter(SAMPLES / "minilm-r16"), options=AuditOptions())


def test_inspect_png_via_cli(tmp_path: Path) -> None:
    picture = tmp_path / "spectra.png"
    result = runner.invoke(app, ["inspect", str(SAMPLES / "minilm-r16"), "--plot", str(picture)])
    assert result.exit_code == 0, result.stderr
    assert "σ spectrum" in result.stdout, "the report still goes to stdout"
    assert png_size(picture.read_bytes()) == pixels(INSPECT_SIZE) == (1200, 500)
    assert decoded_shape(picture) == (500, 1200, 4)


def test_inspect_svg_and_layer_choice(tmp_path: Path) -> None:
    picture = tmp_path / "spectra.svg"
    result = runner.invoke(
        app,
        [
            "inspect",
            str(SAMPLES / "minilm-r16"),
            "--plot",
            str(picture),
            "--plot-layers",
            r"layer\.5\.",
        ],
    )
    assert result.exit_code == 0, result.stderr
    root = ET.fromstring(picture.read_bytes())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    # SVG sizes are in points, 72 per inch
    assert root.attrib["width"] == f"{INSPECT_SIZE[0] * 72:g}pt"
    assert root.attrib["height"] == f"{INSPECT_SIZE[1] * 72:g}pt"


def test_plot_is_deterministic(inspect_report: Any) -> None:
    assert render_plot(inspect_report, fmt="svg") == render_plot(inspect_report, fmt="svg")


def test_trend_and_compare_png(tmp_path: Path) -> None:
    trend_png, compare_png = tmp_path / "trend.png", tmp_path / "compare.png"
    result = runner.invoke(app, ["trend", str(RUN), "--plot", str(trend_png)])
    assert result.exit_code == 0, result.stderr
    # 450 px, plus one legend row naming the sample run's two drifting layers
    assert TREND_SIZE == (12.0, 4.5)
    assert png_size(trend_png.read_bytes()) == (1200, 495)
    assert decoded_shape(trend_png)[:2] == (495, 1200)
    result = runner.invoke(
        app,
        [
            "compare",
            str(RUN / "checkpoint-10"),
            str(RUN / "checkpoint-80"),
            "--plot",
            str(compare_png),
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert png_size(compare_png.read_bytes()) == pixels(COMPARE_SIZE) == (1200, 550)
    assert decoded_shape(compare_png)[:2] == (550, 1200)


def test_compare_figures_grow_with_their_layers(tmp_path: Path) -> None:
    from dataclasses import replace

    from lora_audit.commands.compare import compare_adapters
    from lora_audit.formats import load_adapter

    report = compare_adapters(
        load_adapter(SAMPLES / "minilm-r16"),
        load_adapter(SAMPLES / "minilm-r8-rslora-patterns"),
        top_k=4,
    )
    assert compare_size(report) == (12.0, pytest.approx(1.6 + 0.17 * 31))
    assert png_size(render_plot(report)) == (1200, round((1.6 + 0.17 * 31) * DPI))
    deep = replace(report, layers=report.layers * 40)
    assert compare_size(deep) == (12.0, 16.0)  # capped; bins beyond 300 layers


def test_deep_models_get_taller_inspect_figures(inspect_report: Any) -> None:
    from dataclasses import replace

    deep = tuple(
        replace(layer, name=f"model.layers.{i}.q_proj")
        for i, layer in enumerate(inspect_report.layers * 2)
    )
    report = replace(inspect_report, layers=deep)
    width, height = inspect_size(report)
    assert width == INSPECT_SIZE[0] and height == pytest.approx(1.26 + 0.22 * len(deep))
    assert png_size(render_plot(report)) == (1200, round(height * DPI))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plot", "x.jpg"], "name a .png or .svg file"),
        (["--plot", "noext"], "name a .png or .svg file"),
        (["--plot-layers", "query"], "--plot-layers needs --plot"),
        (["--plot", "x.png", "--plot-layers", "("], "not a regular expression"),
        (["--plot", "x.png", "--plot-layers", "no_such_layer"], "matches none"),
    ],
)
def test_plot_usage_errors(args: list[str], message: str, tmp_path: Path) -> None:
    args = [str(tmp_path / a) if a.startswith(("x.", "noext")) else a for a in args]
    result = runner.invoke(app, ["inspect", str(SAMPLES / "minilm-r4-bf16"), *args])
    assert result.exit_code == 2
    assert message in result.stderr and result.stdout == ""
    assert not list(tmp_path.iterdir()), "nothing written"


def test_missing_matplotlib_is_a_clear_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    picture = tmp_path / "x.png"
    result = runner.invoke(app, ["trend", str(RUN), "--plot", str(picture)])
    assert result.exit_code == 2
    assert "pip install 'lora-rank-audit[plot]'" in result.stderr
    assert not picture.exists() and result.stdout == ""
    from lora_audit.render.plot import require_matplotlib

    with pytest.raises(UsageError, match="matplotlib"):
        require_matplotlib()
