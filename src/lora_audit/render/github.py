"""GitHub Actions workflow commands: one ``::error`` annotation per finding and per error.

An adapter whose scale was assumed for some layers (nothing in the file gave it) gets a
``::warning`` annotation on its file: its numbers are only as right as that guess.

Each line is ``::error file=…,title=…::message``; GitHub shows it on the run's summary page
and, when ``file`` is part of the pull request, on the file. A last ``::notice`` line names
the verdict, so a passing run also says what was checked.

Escaping follows GitHub's runner (``toolkit/packages/core/src/command.ts``): in the message,
``%`` → ``%25``, ``\\r`` → ``%0D``, ``\\n`` → ``%0A``; in property values additionally
``:`` → ``%3A`` and ``,`` → ``%2C`` (:func:`~lora_audit.render.escape.for_github_data`, which
also writes every other line break and control character as a visible escape, so an untrusted
name can never end a command line and start another).
"""

from __future__ import annotations

from lora_audit.render._text import assumed_scale_text, finding_text, policy_text, verdict
from lora_audit.render.escape import for_github_data, for_github_property
from lora_audit.report import CheckReport


def command(name: str, message: str, **properties: str | None) -> str:
    """One workflow command line, ``::name key=value,…::message``, properties in given order."""
    props = ",".join(
        f"{key}={for_github_property(value)}"
        for key, value in properties.items()
        if value is not None
    )
    return f"::{name}{' ' + props if props else ''}::{for_github_data(message)}"


def render_check(report: CheckReport, *, width: int = 100, color: bool = False) -> str:
    """Annotations for a check report; ``width`` and ``color`` are ignored."""
    del width, color
    files = {a.adapter.path: a.adapter.tensor_file for a in report.adapters}
    lines = [
        command("error", error.message, file=error.path, title="lora-audit unreadable adapter")
        for error in report.errors
    ]
    lines += [
        command(
            finding.severity,
            f"{finding_text(finding)} (fix: {finding.fix})",
            file=files.get(finding.adapter),
            title=f"lora-audit {finding.rule}",
        )
        for finding in report.findings
    ]
    lines += [
        command(
            "warning",
            f"{inspect.adapter.path}: {loud}",
            file=inspect.adapter.tensor_file,
            title="lora-audit scale assumed",
        )
        for inspect in report.adapters
        if (loud := assumed_scale_text(inspect)) is not None
    ]
    summary = f"{verdict(report)}; policy {policy_text(report)}"
    lines.append(command("notice", summary, title="lora-audit check"))
    return "\n".join(lines) + "\n"
