"""Auditing several adapters side by side: same numbers as one by one, order, thread bound."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from check_adapters import write_lean, write_unreadable, write_wasteful

from lora_audit.commands import many
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.commands.many import audit_all, find_adapters, inspect_many
from lora_audit.engine import host_buffers
from lora_audit.engine.spectra import EngineOptions
from lora_audit.formats import load_adapter

OPTIONS = AuditOptions(engine=EngineOptions(device="cpu"))


def _tree(root: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        writer = write_wasteful if i % 2 else write_lean
        paths.append(writer(root / f"a{i:02d}"))
    write_unreadable(root / "a03-broken")
    return paths


def test_side_by_side_equals_one_by_one_in_order(tmp_path: Path) -> None:
    paths = _tree(tmp_path, 6)
    found = find_adapters([tmp_path]).found
    outcomes = audit_all(found, options=OPTIONS)
    assert [o.path.name for o in outcomes] == [
        "a00", "a01", "a02", "a03", "adapter_model.safetensors", "a04", "a05",
    ]  # fmt: skip
    broken = outcomes[4]
    assert broken.report is None and broken.error is not None
    for outcome, path in zip([o for o in outcomes if o.report], paths, strict=True):
        alone = inspect_adapter(load_adapter(path), options=OPTIONS)
        assert outcome.report == alone


def test_threads_never_outnumber_the_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path, 8)
    monkeypatch.setattr(host_buffers, "cpu_cores", lambda: 4)
    monkeypatch.setattr(many, "cpu_cores", lambda: 4)
    seen: list[int] = []
    original = host_buffers.cpu_workers

    def spy() -> int:
        seen.append(original())
        return seen[-1]

    monkeypatch.setattr(host_buffers, "cpu_workers", spy)
    live, peak = set(), [0]
    lock = threading.Lock()
    real = many.audit_one

    def counted(*args: object, **kwargs: object) -> many.Outcome:
        with lock:
            live.add(threading.get_ident())
            peak[0] = max(peak[0], len(live))
        try:
            time.sleep(0.05)  # long enough for the next adapter to start beside this one
            return real(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                live.discard(threading.get_ident())

    monkeypatch.setattr(many, "audit_one", counted)
    outcomes = audit_all(find_adapters([tmp_path]).found, options=OPTIONS)
    assert len(outcomes) == 9
    assert 1 < peak[0] <= many.IN_FLIGHT  # adapters side by side, bounded
    assert seen and max(seen) * min(4, many.IN_FLIGHT) <= 4  # each gets its share


def test_the_report_has_one_row_per_adapter_with_its_verdict(tmp_path: Path) -> None:
    _tree(tmp_path, 2)
    report = inspect_many(
        audit_all(find_adapters([tmp_path]).found, options=OPTIONS), options=OPTIONS
    )
    assert [(r.verdict, r.findings) for r in report.summary] == [
        ("keep", None), ("retrain", None), ("error", None),
    ]  # fmt: skip
    lean, wasteful, broken = report.summary
    assert lean.wasted_fraction == 0.0 and wasteful.wasted_fraction == pytest.approx(14 / 16)
    assert wasteful.recommended_rank == 1 and wasteful.nominal_rank == 16  # k@0.9 = 1
    assert broken.message and broken.wasted_fraction is None
    assert report.status == "error"


def test_cpu_share_limits_the_workers_and_is_undone() -> None:
    cores = host_buffers.cpu_workers()
    with host_buffers.cpu_share(1):
        assert host_buffers.cpu_workers() == 1
    assert host_buffers.cpu_workers() == cores


def test_the_inline_executor_runs_at_once_and_keeps_errors_for_result() -> None:
    from lora_audit.engine.host_buffers import InlineExecutor

    ran: list[int] = []
    pool = InlineExecutor()
    assert list(pool.map(lambda x: ran.append(x) or x * 2, [1, 2])) == [2, 4] and ran == [1, 2]
    failed = pool.submit(lambda: 1 // 0)
    assert failed.done()
    with pytest.raises(ZeroDivisionError):
        failed.result()
