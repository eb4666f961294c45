"""``check``'s extra outputs, so one run serves a whole CI job: ``--junit-xml FILE`` and the
Markdown job summary appended to ``$GITHUB_STEP_SUMMARY``.

GitHub Actions names in ``GITHUB_STEP_SUMMARY`` a file that each step appends Markdown to; the
runner shows it on the run's summary page (at most 1 MiB per step). When it is set, ``check``
appends its Markdown report there, as the popular actions do, unless ``--no-step-summary`` is
given or the main report is Markdown on stdout already (``--format markdown >>
"$GITHUB_STEP_SUMMARY"``, the older recipe, must not get it twice).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lora_audit.cli._common import outputs, preflight, warn

if TYPE_CHECKING:
    from lora_audit.report import CheckReport

#: GitHub refuses a step summary larger than this (``$GITHUB_STEP_SUMMARY upload aborted``).
SUMMARY_LIMIT = 1024 * 1024

JunitXmlOption = Annotated[
    Path | None,
    typer.Option(
        "--junit-xml",
        readable=False,
        help="Also write the report as JUnit XML to this file (for CI test reporters), "
        "whatever --format prints.",
        show_default=False,
    ),
]
NoStepSummaryOption = Annotated[
    bool,
    typer.Option(
        "--no-step-summary",
        help="Do not append the Markdown summary to $GITHUB_STEP_SUMMARY (appended by default "
        "when that variable is set, unless --format markdown prints it to stdout).",
    ),
]


def step_summary_file(
    *,
    main_format: str,
    output: Path | None,
    disabled: bool,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """The job summary file to append to, or ``None`` (not in Actions, turned off, or the
    Markdown report goes to stdout already, where the workflow may redirect it)."""
    value = (os.environ if environ is None else environ).get("GITHUB_STEP_SUMMARY", "")
    if disabled or not value or (main_format == "markdown" and output is None):
        return None
    return Path(value)


def plan_extra_outputs(*, junit_xml: Path | None) -> None:
    """Check ``--junit-xml`` before any work (never an input, never the ``-o`` file)."""
    preflight(junit_xml, role="--junit-xml")


def write_extra_outputs(
    report: CheckReport, *, junit_xml: Path | None, step_summary: Path | None
) -> None:
    """Write the JUnit file (atomically, through the output guard) and append the summary."""
    from lora_audit.output_format import OutputFormat
    from lora_audit.render import render

    if junit_xml is not None:
        text = render(report, OutputFormat.JUNIT)
        outputs().write(junit_xml, text.encode("utf-8"), role="--junit-xml")
    if step_summary is not None:
        _append_summary(step_summary, render(report, OutputFormat.MARKDOWN))


def _append_summary(path: Path, text: str) -> None:
    """Append ``text`` to the job summary; a failure is a warning (the gate still decides)."""
    data = text.encode("utf-8")
    if len(data) > SUMMARY_LIMIT:
        warn(
            f"the Markdown summary is {len(data):,} bytes, over GitHub's 1 MiB step summary "
            "limit; it is not appended (see --junit-xml or --format json for the full report)"
        )
        return
    try:
        with path.open("ab") as fh:
            fh.write(b"\n" + data if _ends_without_newline(path) else data)
    except OSError as exc:
        warn(
            f"cannot append the summary to $GITHUB_STEP_SUMMARY ({path}): "
            f"{exc.strerror or exc} — pass --no-step-summary to skip it"
        )


def _ends_without_newline(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return False
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except OSError:
        return False
