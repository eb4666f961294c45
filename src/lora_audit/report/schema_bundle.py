"""Keep every shipped JSON Schema usable on its own: the inspect schema bundled where used.

``check.schema.json``, ``compare.schema.json`` and ``inspect-many.schema.json`` refer to the
inspect report
(``"$ref": "inspect-1.json"``), which resolves against their ``$id`` to
``https://lora-audit.invalid/schema/inspect-1.json`` — an address nothing can fetch. So each
of them carries a copy of ``inspect.schema.json`` under ``$defs`` as an embedded schema
resource (JSON Schema 2020-12 §9.3, "bundling"): the copy keeps its ``$id``, so the reference
and the copy's own ``#/$defs/…`` references resolve inside the one file, and
``check-jsonschema --schemafile check.schema.json`` or plain :mod:`jsonschema` validate a
report with no registry and no network.

``inspect.schema.json`` is the one source: run ``python -m lora_audit.report.schema_bundle``
after editing it to rewrite the copies (a test fails while they differ).
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

#: The ``$defs`` key of the bundled inspect schema.
INSPECT_DEF = "inspect_report"
#: Schemas that refer to the inspect schema and so carry a bundled copy of it.
BUNDLING = (
    "check.schema.json",
    "compare.schema.json",
    "inspect-many.schema.json",
    "jsonl.schema.json",
)


def schema_dir() -> Path:
    """The folder of the shipped schemas (``lora_audit/report/schema``)."""
    return Path(str(resources.files("lora_audit") / "report" / "schema"))


def load(name: str, *, folder: Path | None = None) -> dict[str, Any]:
    """One schema file, parsed (``name`` such as ``"check.schema.json"``)."""
    path = (folder or schema_dir()) / name
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def bundled(schema: dict[str, Any], *, inspect: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``inspect`` embedded as ``$defs[INSPECT_DEF]`` (its ``$schema`` dropped:
    the dialect is the enclosing one; its ``$id`` kept, so ``inspect-1.json`` finds it)."""
    copy = {key: value for key, value in inspect.items() if key != "$schema"}
    defs = {key: value for key, value in schema.get("$defs", {}).items() if key != INSPECT_DEF}
    defs[INSPECT_DEF] = copy
    return {**schema, "$defs": defs}


def dumps(schema: dict[str, Any]) -> str:
    """A schema file's text, as the shipped files are written (2-space indent, UTF-8)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def expected_files(folder: Path | None = None) -> dict[str, str]:
    """The text each bundling schema file must have, by file name."""
    inspect = load("inspect.schema.json", folder=folder)
    return {name: dumps(bundled(load(name, folder=folder), inspect=inspect)) for name in BUNDLING}


def main(argv: list[str] | None = None) -> int:
    """Rewrite the bundled copies in place (or, with ``--check``, exit 1 when stale)."""
    args = sys.argv[1:] if argv is None else argv
    folder = schema_dir()
    stale = [n for n, text in expected_files(folder).items() if (folder / n).read_text() != text]
    if "--check" in args:
        for name in stale:
            sys.stderr.write(f"{name}: bundled inspect schema is stale\n")
        return 1 if stale else 0
    for name, text in expected_files(folder).items():
        (folder / name).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
