"""Read what an earlier ``--format jsonl`` run wrote, so that a rerun skips it (``--resume``).

Every line of such a file is one JSON object (``report/schema/jsonl.schema.json``). Only
adapter lines count; summary lines are passed over (a rerun writes a new one). A last line
without its newline is what a killed writer left (SIGKILL, power loss: SIGINT and SIGTERM
never cut a line) and is dropped; :attr:`Earlier.complete_bytes` says where the complete lines
end, so that a rerun appending to the same file first cuts that tail off. Anything else that
is not such a line is refused: the file is not a lora-audit jsonl file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lora_audit.errors import InputError


@dataclass(frozen=True, kw_only=True)
class EarlierLine:
    """One adapter line of the earlier run.

    Attributes
    ----------
    status
        The line's ``status`` (``ok``, ``error``, ``pass``, ``fail``, ``unreadable``).
    findings
        ``check``: how many findings it had.
    settings
        ``(energy, coverage, method)`` its report was made with; ``None`` for an unreadable
        adapter (no report).
    """

    status: str
    findings: int = 0
    settings: tuple[float, float, str] | None = None


@dataclass(frozen=True, kw_only=True)
class Earlier:
    """What the earlier run did: its adapter lines by path, and where its complete lines end."""

    lines: dict[str, EarlierLine]
    complete_bytes: int


def read_earlier(path: Path, *, command: str) -> Earlier:
    """The adapter lines of ``path``, a ``--format jsonl`` file of ``command``; a missing
    file is an empty one (a first run can be started with ``--resume`` already).

    Raises
    ------
    InputError
        When a complete line is not a lora-audit jsonl line, or is one of another command.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Earlier(lines={}, complete_bytes=0)
    except OSError as exc:
        raise InputError(f"--resume {path}: cannot be read: {exc}") from exc
    end = data.rfind(b"\n") + 1  # a tail without its newline was cut by a kill: dropped
    lines: dict[str, EarlierLine] = {}
    for number, raw in enumerate(data[:end].splitlines(), start=1):
        item = _parse(raw, path=path, number=number)
        if item.get("kind") != "adapter":
            continue
        if item.get("command") != command:
            raise InputError(
                f"--resume {path}: line {number} was written by `{item.get('command')}`, "
                f"not `{command}`",
                hint=f"resume it with lora-audit {item.get('command')}, or start a new file",
            )
        report = item.get("report")
        settings = None
        if isinstance(report, dict):
            s = report.get("settings", {})
            settings = (s.get("energy"), s.get("coverage"), s.get("method"))
        findings = item.get("findings")
        lines[str(item["path"])] = EarlierLine(
            status=str(item["status"]),
            findings=len(findings) if isinstance(findings, list) else 0,
            settings=settings,
        )
    return Earlier(lines=lines, complete_bytes=end)


def _parse(raw: bytes, *, path: Path, number: int) -> dict[str, object]:
    try:
        item = json.loads(raw)
    except ValueError:
        item = None
    ok = isinstance(item, dict) and item.get("kind") in ("adapter", "summary")
    if ok and item["kind"] == "adapter":  # type: ignore[index]
        ok = "path" in item and "status" in item  # type: ignore[operator]
    if not ok:
        raise InputError(
            f"--resume {path}: line {number} is not a lora-audit jsonl line",
            hint="name a file written by --format jsonl",
        )
    return item  # type: ignore[no-any-return]
