"""Finding adapters below directories: what counts, what is skipped, order, limits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from check_adapters import write_lean, write_unreadable
from conftest import SAMPLES
from factories import save_tensors

from lora_audit.errors import InputError
from lora_audit.formats import discovery
from lora_audit.formats.discovery import discover

KOHYA = SAMPLES / "sd" / "kohya-lora.safetensors"


def _tree(root: Path) -> Path:
    """runs/{b-peft, a-peft/checkpoint-5, kohya.safetensors, vae.safetensors, .hidden, …}."""
    write_lean(root / "b-peft")
    write_lean(root / "a-peft")
    write_lean(root / "a-peft" / "checkpoint-5")
    write_lean(root / "run" / "checkpoint-10")
    write_lean(root / "run" / "checkpoint-20")
    write_lean(root / ".hidden" / "x")
    write_lean(root / "__pycache__" / "x")
    write_lean(root / "node_modules" / "x")
    (root / "nested" / "deep").mkdir(parents=True)
    shutil.copy(KOHYA, root / "nested" / "deep" / "kohya.safetensors")
    save_tensors({"w": np.zeros((2, 2), "float32")}, root / "vae.safetensors", metadata={})
    (root / "notes.txt").write_text("not an adapter")
    return root


def _names(found: discovery.Discovery, root: Path) -> list[str]:
    return [str(f.path.relative_to(root)) for f in found.found]


def test_a_tree_is_searched_in_sorted_order_skipping_what_it_should(tmp_path: Path) -> None:
    root = _tree(tmp_path / "runs")
    found = discover([root])
    assert _names(found, root) == ["a-peft", "b-peft", "nested/deep/kohya.safetensors"]
    assert found.searched
    assert found.skipped_checkpoints == 3  # run/checkpoint-*, and a-peft/checkpoint-5
    assert found.skipped_files == 1  # vae.safetensors holds no LoRA factor
    assert all(f.error is None for f in found.found)


def test_include_checkpoints_adds_them_also_inside_an_adapter_directory(tmp_path: Path) -> None:
    root = _tree(tmp_path / "runs")
    names = _names(discover([root], include_checkpoints=True), root)
    assert names == [
        "a-peft",
        "a-peft/checkpoint-5",
        "b-peft",
        "nested/deep/kohya.safetensors",
        "run/checkpoint-10",
        "run/checkpoint-20",
    ]


def test_a_named_adapter_is_kept_as_given_and_not_searched(tmp_path: Path) -> None:
    root = _tree(tmp_path / "runs")
    named = root / "a-peft"
    found = discover([named, root / "run" / "checkpoint-10"])
    assert [f.path for f in found.found] == [named, root / "run" / "checkpoint-10"]
    assert not found.searched


def test_repeated_paths_and_the_same_tensor_file_count_once(tmp_path: Path) -> None:
    root = _tree(tmp_path / "runs")
    (tmp_path / "link").symlink_to(root / "b-peft")
    found = discover([root / "b-peft", root, tmp_path / "link", root / "b-peft"])
    assert _names(found, root) == ["b-peft", "a-peft", "nested/deep/kohya.safetensors"]


def test_only_checkpoints_below_says_how_to_include_them(tmp_path: Path) -> None:
    root = _tree(tmp_path / "runs")
    (found,) = discover([root / "run"]).found
    assert found.error is not None
    assert "2 checkpoint-* directories" in str(found.error)
    assert "--include-checkpoints" in str(found.error)


def test_an_empty_directory_is_read_as_named_for_the_reader_s_message(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (found,) = discover([tmp_path / "empty"]).found
    assert found.path == tmp_path / "empty" and found.error is None


def test_an_unreadable_safetensors_file_is_kept_so_its_error_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    write_lean(root / "good")
    (root / "torn.safetensors").write_bytes(b"\x01\x02")
    write_unreadable(root / "broken")  # a PEFT-named file of random bytes, no config
    names = _names(discover([root]), root)
    assert names == ["broken/adapter_model.safetensors", "good", "torn.safetensors"]


def test_symlinked_directories_are_not_followed_while_searching(tmp_path: Path) -> None:
    root = tmp_path / "loop"
    write_lean(root / "a")
    write_lean(root / "b")
    (root / "again").symlink_to(root, target_is_directory=True)
    assert _names(discover([root]), root) == ["a", "b"]


def test_too_many_entries_is_refused_with_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discovery, "MAX_ENTRIES", 5)
    for i in range(6):
        (tmp_path / "big" / f"d{i}").mkdir(parents=True)
    with pytest.raises(InputError, match=r"more than 5 directory entries.*narrower"):
        discover([tmp_path / "big"])


def test_too_deep_and_too_many_adapters_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discovery, "MAX_DEPTH", 2)
    (tmp_path / "deep" / "1" / "2" / "3" / "4").mkdir(parents=True)
    with pytest.raises(InputError, match="more than 2 directory levels"):
        discover([tmp_path / "deep"])
    monkeypatch.setattr(discovery, "MAX_ADAPTERS", 1)
    write_lean(tmp_path / "two" / "a")
    write_lean(tmp_path / "two" / "b")
    with pytest.raises(InputError, match="more than 1 adapters"):
        discover([tmp_path / "two"])


def test_beside_other_adapters_a_folder_of_checkpoints_is_only_counted(tmp_path: Path) -> None:
    """``check sample_adapters/*/`` names a run of checkpoints too: it is skipped, not an error."""
    root = _tree(tmp_path / "runs")
    found = discover([root / "b-peft", root / "run"])
    assert [f.path for f in found.found] == [root / "b-peft"]
    assert found.skipped_checkpoints == 2 and found.searched


def test_a_streamed_run_takes_more_adapters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discovery, "MAX_ADAPTERS", 1)
    monkeypatch.setattr(discovery, "STREAMED_ADAPTERS", 2)
    for name in "abc"[:2]:
        write_lean(tmp_path / "two" / name)
    assert len(discover([tmp_path / "two"], streamed=True).found) == 2
    write_lean(tmp_path / "two" / "c")
    with pytest.raises(InputError, match="more than 2 adapters"):
        discover([tmp_path / "two"], streamed=True)
