"""A Hugging Face hub cache laid out as huggingface_hub writes it, built in tmp_path.

``models--org--name/refs/main`` holds the commit; ``snapshots/<commit>/`` holds symlinks into
``blobs/`` (named by content hash). Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from check_adapters import write_lean, write_wasteful
from conftest import SAMPLES
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.errors import InputError
from lora_audit.formats import load_adapter
from lora_audit.formats.discovery import discover
from lora_audit.formats.hf_cache import snapshot_of

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLD = "fedcba9876543210fedcba9876543210fedcba98"


def cache_repo(hub: Path, repo: str, source: Path, *, commit: str = COMMIT) -> Path:
    """``hub/models--org--name`` holding ``source``'s files as the cache does."""
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)  # no newline, as huggingface_hub writes it
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        data = file.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    return root


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    hub = tmp_path / "hub"
    cache_repo(hub, "org/lean", write_lean(tmp_path / "src" / "lean"))
    cache_repo(hub, "org/wasteful", write_wasteful(tmp_path / "src" / "wasteful"))
    (hub / ".locks" / "models--org--lean").mkdir(parents=True)
    base = tmp_path / "src" / "base"
    base.mkdir()
    shutil.copy(SAMPLES / "minilm-r16" / "adapter_config.json", base / "config.json")
    cache_repo(hub, "org/base-model", base)  # no adapter in it
    return hub


def test_a_repository_directory_is_read_at_refs_main(hub: Path) -> None:
    repo = hub / "models--org--lean"
    assert snapshot_of(repo) == repo / "snapshots" / COMMIT
    (found,) = discover([repo]).found
    assert found.path == repo / "snapshots" / COMMIT
    adapter = load_adapter(found.path)
    assert len(adapter.layers) == 2
    assert (found.path / "adapter_model.safetensors").is_symlink()  # read through the link


def test_a_snapshot_directory_is_an_adapter_directory(hub: Path) -> None:
    snapshot = hub / "models--org--wasteful" / "snapshots" / COMMIT
    (found,) = discover([snapshot]).found
    assert found.path == snapshot
    assert load_adapter(snapshot).config["r"] == 16


def test_the_hub_directory_finds_every_cached_adapter(hub: Path) -> None:
    found = discover([hub]).found
    assert [f.path.relative_to(hub).parts[0] for f in found] == [
        "models--org--lean",
        "models--org--wasteful",
    ]


def test_refs_main_naming_a_missing_snapshot_is_an_error_not_a_download(hub: Path) -> None:
    repo = hub / "models--org--lean"
    (repo / "refs" / "main").write_text(OLD)
    with pytest.raises(InputError, match=f"refs/main names snapshot {OLD}") as caught:
        snapshot_of(repo)
    assert COMMIT in str(caught.value)  # the hint names the snapshot that is there
    (found,) = discover([repo]).found
    assert found.error is not None


def test_a_repository_without_refs_main_asks_for_a_snapshot(hub: Path) -> None:
    repo = hub / "models--org--lean"
    (repo / "refs" / "main").unlink()
    with pytest.raises(InputError, match=r"without refs/main.*snapshots/<hash>"):
        snapshot_of(repo)


def test_inspect_follows_the_cache_end_to_end(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    result = CliRunner().invoke(
        app, ["inspect", str(hub / "models--org--wasteful"), "--device", "cpu", "-f", "json"]
    )
    assert result.exit_code == 0, result.output
    assert f"snapshots/{COMMIT}" in result.stdout
    assert '"kind": "inspect"' in result.stdout
