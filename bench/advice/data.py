"""Two real-text tasks built from the docstrings of installed Python packages.

Sentences come from the docstrings (parsed with :mod:`ast`, nothing is imported) of eight
libraries installed in the environment. The split is by source module: every sentence of a
module goes to train or to test, chosen by a hash of the module's path, so no test sentence
(or its neighbours) was seen in training.

``library``
    Which of the eight libraries a sentence comes from (8 classes, balanced).
``kind``
    Whether a sentence comes from a module's, a class's or a function's docstring
    (3 classes, balanced; every library mixed).
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

LIBRARIES = (
    "numpy",
    "scipy",
    "torch",
    "transformers",
    "sympy",
    "matplotlib",
    "sklearn",
    "networkx",
)
SECTION = re.compile(
    r"\n\s*(Parameters|Returns|Examples?|Notes|See Also|References|Args|"
    r"Arguments|Raises|Yields|Attributes|Example|Usage|Warning)\s*:?\s*\n"
)
SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]][.!?])\s+(?=[A-Z])")
WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True, kw_only=True)
class Example:
    """One example: the text (``pair`` is unused by both tasks: single sentences) and its label."""

    text: str
    pair: str | None
    label: int


def _sentences(doc: str) -> list[str]:
    """The prose sentences of a docstring's description (before its first section)."""
    prose = SECTION.split("\n" + doc, maxsplit=1)[0]
    out: list[str] = []
    for paragraph in re.split(r"\n\s*\n", prose):
        if ">>>" in paragraph or "::" in paragraph or paragraph.strip().startswith(("..", "|")):
            continue
        flat = " ".join(paragraph.split())
        for sentence in SENTENCE_END.split(flat):
            words = sentence.split()
            alpha = sum(len(w) for w in WORD.findall(sentence))
            if 6 <= len(words) <= 40 and alpha >= 0.7 * len(sentence.replace(" ", "")):
                out.append(sentence)
    return out


KINDS = ("module", "class", "function")


def _kind(node: ast.AST) -> str:
    if isinstance(node, ast.Module):
        return "module"
    return "class" if isinstance(node, ast.ClassDef) else "function"


def _docstrings(path: Path) -> list[tuple[str, str]]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return []
    nodes = (
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    )
    return [(_kind(n), d) for n in nodes if (d := ast.get_docstring(n))]


def _is_test(path: Path, seed: int) -> bool:
    """The module's split: a fifth of the modules, by a salted hash of their path."""
    digest = hashlib.sha256(f"{seed}:{path.as_posix()}".encode()).digest()
    return digest[0] % 5 == 0


Docs = dict[str, dict[str, list[tuple[str, list[str]]]]]


def collect(site: Path, *, seed: int) -> Docs:
    """Per library and split, the docstrings (kind, sentences), sentences deduplicated."""
    seen: set[str] = set()
    data: Docs = {}
    for library in LIBRARIES:
        splits: dict[str, list[tuple[str, list[str]]]] = {"train": [], "test": []}
        for path in sorted((site / library).rglob("*.py")):
            if "/tests/" in path.as_posix():
                continue
            split = "test" if _is_test(path.relative_to(site), seed) else "train"
            for kind, doc in _docstrings(path):
                kept = [s for s in _sentences(doc) if s not in seen]
                seen.update(kept)
                if kept:
                    splits[split].append((kind, kept))
        data[library] = splits
    return data


def library_task(data: Docs, split: str, per_class: int, *, seed: int) -> list[Example]:
    """Balanced library-classification examples (``per_class`` sentences per library)."""
    rng = random.Random(f"library:{split}:{seed}")
    out: list[Example] = []
    for label, library in enumerate(LIBRARIES):
        pool = [s for _, doc in data[library][split] for s in doc]
        rng.shuffle(pool)
        out += [Example(text=s, pair=None, label=label) for s in pool[:per_class]]
    rng.shuffle(out)
    return out


def kind_task(data: Docs, split: str, per_class: int, *, seed: int) -> list[Example]:
    """Balanced docstring-kind examples (module / class / function), libraries mixed."""
    rng = random.Random(f"kind:{split}:{seed}")
    out: list[Example] = []
    for label, kind in enumerate(KINDS):
        pool = [
            s for library in LIBRARIES for k, doc in data[library][split] if k == kind for s in doc
        ]
        rng.shuffle(pool)
        out += [Example(text=s, pair=None, label=label) for s in pool[:per_class]]
    rng.shuffle(out)
    return out


def build(
    cache: Path, *, train: int, test: int, seed: int = 0
) -> dict[str, dict[str, list[Example]]]:
    """Both tasks' train/test examples, cached as JSON at ``cache`` (built once)."""
    if cache.exists():
        raw = json.loads(cache.read_text())
        return {t: {s: [Example(**e) for e in v] for s, v in d.items()} for t, d in raw.items()}
    data = collect(Path(sysconfig.get_paths()["purelib"]), seed=seed)
    classes = len(LIBRARIES)
    tasks = {
        "library": {
            "train": library_task(data, "train", train // classes, seed=seed),
            "test": library_task(data, "test", test // classes, seed=seed),
        },
        "kind": {
            "train": kind_task(data, "train", train // len(KINDS), seed=seed),
            "test": kind_task(data, "test", -(-test // len(KINDS)), seed=seed),
        },
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(
        json.dumps(
            {t: {s: [e.__dict__ for e in v] for s, v in d.items()} for t, d in tasks.items()}
        )
    )
    return tasks
