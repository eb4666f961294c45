"""The on-disk cache of base weights' left singular bases (``inspect --base --intruders``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lora_audit.formats import atomic
from lora_audit.formats.basis_cache import (
    DEFAULT_MAX_BYTES,
    FORMAT,
    BasisCache,
    basis_key,
    cache_root,
    max_bytes,
)


def matrix(out: int, inp: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((out, inp))


def test_the_folder_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LORA_AUDIT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "lora-audit"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: absolute only
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "lora-audit"
    monkeypatch.setenv("LORA_AUDIT_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    assert BasisCache.default().folder == tmp_path / "mine" / FORMAT


def test_the_bound_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORA_AUDIT_CACHE_MAX_BYTES", raising=False)
    assert max_bytes() == DEFAULT_MAX_BYTES
    monkeypatch.setenv("LORA_AUDIT_CACHE_MAX_BYTES", "1234")
    assert max_bytes() == 1234
    monkeypatch.setenv("LORA_AUDIT_CACHE_MAX_BYTES", "1e9")
    with pytest.raises(ValueError, match="whole number"):
        max_bytes()


def test_the_key_is_the_content_and_the_orientation() -> None:
    w = matrix(6, 4, seed=0)
    assert basis_key(w) == basis_key(w.copy()) == basis_key(np.asfortranarray(w))
    assert basis_key(w) != basis_key(w.T)  # the basis of Wᵀ is another one
    nudged = w.copy()
    nudged[3, 2] = np.nextafter(nudged[3, 2], np.inf)
    assert basis_key(nudged) != basis_key(w)
    assert basis_key(w.reshape(4, 6)) != basis_key(w)  # same bytes, another shape


def entry(folder: Path, key: str) -> Path:
    [path] = folder.glob(f"{key}-*.npy")
    return path


def test_round_trip_and_refusals(tmp_path: Path) -> None:
    cache = BasisCache(folder=tmp_path / "c", limit=10**6)
    u = matrix(8, 3, seed=1)
    assert cache.load("k", (8, 3)) is None
    assert cache.store("k", u)
    np.testing.assert_array_equal(cache.load("k", (8, 3)), u)
    assert cache.load("k", (3, 8)) is None, "a basis of another shape is a miss"
    path = entry(tmp_path / "c", "k")
    assert [p.name for p in (tmp_path / "c").iterdir()] == [path.name], "no temporary left"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of one value: still a finite float64
    path.write_bytes(bytes(data))
    assert cache.load("k", (8, 3)) is None, "an entry that fails its checksum is a miss"
    path.write_bytes(b"\x93NUMPY garbage")
    assert cache.load("k", (8, 3)) is None, "a damaged entry is a miss"
    bad = u.copy()
    bad[0, 0] = np.nan
    assert not cache.store("nan", bad) and cache.load("nan", (8, 3)) is None


def test_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    one = 8 * 10 * 10 + 128  # an entry's bytes, header included
    cache = BasisCache(folder=tmp_path, limit=3 * one)
    for i, key in enumerate("abc"):
        assert cache.store(key, matrix(10, 10, seed=i))
        os.utime(entry(tmp_path, key), (1000 + i, 1000 + i))
    assert cache.load("a", (10, 10)) is not None  # a hit makes "a" the most recent
    assert cache.store("d", matrix(10, 10, seed=9))
    assert sorted(p.stem[0] for p in tmp_path.glob("*.npy")) == ["a", "c", "d"]
    assert sum(p.stat().st_size for p in tmp_path.glob("*.npy")) <= cache.limit


def test_off_too_large_or_unwritable_stores_nothing(tmp_path: Path) -> None:
    u = matrix(10, 10, seed=0)
    assert not BasisCache(folder=tmp_path / "off", limit=0).store("k", u)
    assert not (tmp_path / "off").exists()
    assert not BasisCache(folder=tmp_path / "small", limit=100).store("k", u)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert not BasisCache(folder=blocker / "sub", limit=10**6).store("k", u)
    assert not atomic._LIVE, "no temporary path left tracked"
