"""Outputs never replace inputs, never delete what lora-audit did not write, never stay half.

Issue 17 §1 and §6: every case ends with one line on stderr, the documented exit code, no
traceback, and every input's SHA-256 unchanged. Subprocess tests pause the writer at its
commit point through ``LORA_AUDIT_TEST_HOLD`` (read only by tests, see formats/atomic.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES
from factories import FakeAdapter, FakeLayer, planted_factors, write_peft
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.errors import ExitCode
from lora_audit.formats import atomic, load_adapter

runner = CliRunner()
KOHYA = SAMPLES / "sd" / "kohya-lora.safetensors"


def digest(path: Path) -> str:
    """SHA-256 over a file, or over a directory's files (names and bytes)."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if f.is_file():
            h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def small_peft(directory: Path, seed: int = 0) -> Path:
    b, a = planted_factors(out=12, inp=10, rank=4, spectrum=np.array([3.0, 1, 0.1]), seed=seed)
    layer = FakeLayer("model.layers.0.q_proj", b, a)
    return write_peft(directory, FakeAdapter([layer], {"r": 4, "lora_alpha": 8}))


@pytest.fixture
def peft(tmp_path: Path) -> Path:
    return small_peft(tmp_path / "adapter")


@pytest.fixture
def kohya(tmp_path: Path) -> Path:
    path = tmp_path / "lora.safetensors"
    path.write_bytes(KOHYA.read_bytes())
    return path


def refused(args: list[str], *, code: int = 2, says: str = "") -> str:
    """Run the CLI in-process; assert a one-line refusal with ``code``; return the line."""
    result = runner.invoke(app, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("lora-audit: error: "), result.stderr
    assert "Traceback" not in result.stderr and says in lines[0]
    return lines[0]


def no_temporaries(directory: Path) -> None:
    assert [p.name for p in directory.iterdir() if p.name.startswith(atomic.TMP_PREFIX)] == []


# --- every output against every input -------------------------------------------------------


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json"])
@pytest.mark.parametrize("force", [False, True])
def test_inspect_report_over_an_adapter_file(peft: Path, name: str, force: bool) -> None:
    before = digest(peft)
    args = ["inspect", str(peft), "-f", "json", "-o", str(peft / name)]
    refused(args + ["--force"] * force, says="would overwrite the input")
    assert digest(peft) == before


def test_compress_report_over_the_input_or_the_output(peft: Path, tmp_path: Path) -> None:
    before, out = digest(peft), tmp_path / "out"
    base = ["compress", str(peft), "-o", str(out), "--rank", "1", "--force"]
    refused([*base, "--report", str(peft / "adapter_model.safetensors")], says="the input")
    refused([*base, "--report", str(out / "adapter_model.safetensors")], says="also where")
    refused([*base, "--report", str(out)], says="also where")
    assert digest(peft) == before and not out.exists()


def test_check_report_over_the_adapter_or_the_policy(peft: Path, tmp_path: Path) -> None:
    policy = tmp_path / "lora-audit.toml"
    policy.write_text("max-waste = 0.9\n")
    before = digest(peft), digest(policy)
    for target in (peft / "adapter_model.safetensors", policy):
        args = ["check", str(peft), "--config", str(policy), "-f", "junit", "-o", str(target)]
        refused([*args, "--force"], says="would overwrite the input")
    assert (digest(peft), digest(policy)) == before


def test_trend_report_over_a_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for i, step in enumerate((40, 80)):
        small_peft(run / f"checkpoint-{step}", seed=i)
    before = digest(run)
    target = run / "checkpoint-80" / "adapter_model.safetensors"
    refused(["trend", str(run), "-o", str(target), "--force"], says="would overwrite the input")
    assert digest(run) == before


def test_compare_report_over_b(peft: Path, tmp_path: Path) -> None:
    other = small_peft(tmp_path / "b", seed=3)
    before = digest(other)
    target = other / "adapter_model.safetensors"
    refused(["compare", str(peft), str(other), "-o", str(target), "--force"], says="the input")
    assert digest(other) == before


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_links_to_an_input_are_the_input(kohya: Path, tmp_path: Path, link: str) -> None:
    before = digest(kohya)
    for name in ("report.json", "picture.png"):
        alias = tmp_path / name
        alias.unlink(missing_ok=True)
        if link == "hard":
            os.link(kohya, alias)
        else:
            alias.symlink_to(kohya)
        option = "--plot" if name.endswith(".png") else "-o"
        refused(["inspect", str(kohya), option, str(alias), "--force"], says="the input")
        assert digest(kohya) == before and alias.exists()


def test_plot_over_a_base_model_file(peft: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    weight = base / "model.safetensors"
    weight.write_bytes(b"not read: the plot is refused first")
    alias = tmp_path / "base.png"
    alias.symlink_to(weight)
    args = ["inspect", str(peft), "--base", str(base), "--plot", str(alias), "--force"]
    refused(args, says="would overwrite the input")
    assert weight.read_bytes().startswith(b"not read")


def test_two_outputs_of_one_run_may_not_collide(peft: Path, tmp_path: Path) -> None:
    target = tmp_path / "same.png"
    refused(["inspect", str(peft), "--plot", str(target), "-o", str(target)], says="also where")
    assert not target.exists()


# --- existing files, directories, links and special files ------------------------------------


def test_an_existing_report_needs_force(peft: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text("mine")
    refused(["inspect", str(peft), "-f", "json", "-o", str(report)], says="--force")
    assert report.read_text() == "mine"
    result = runner.invoke(app, ["inspect", str(peft), "-f", "json", "-o", str(report), "--force"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(report.read_text())["kind"] == "inspect"
    no_temporaries(tmp_path)


def test_force_never_deletes_a_foreign_directory(peft: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')\n")
    (project / "adapter_config.json").write_text("{}")
    before = digest(project)
    args = ["compress", str(peft), "-o", str(project), "--rank", "1", "--force"]
    refused(args, says="did not write (src)")
    assert digest(project) == before
    no_temporaries(tmp_path)


def test_force_onto_the_working_directory(
    peft: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "work" / "out"
    result = runner.invoke(app, ["compress", str(peft), "-o", str(out), "--rank", "2"])
    assert result.exit_code == 0, result.stderr
    monkeypatch.chdir(out)
    result = runner.invoke(app, ["compress", str(peft), "-o", ".", "--rank", "1", "--force"])
    assert result.exit_code == 0, result.stderr
    monkeypatch.chdir(tmp_path)
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no stray .old directory
    assert load_adapter(out).layers[0].rank == 1
    monkeypatch.chdir(tmp_path / "work")  # a directory that is not an adapter's
    refused(["compress", str(peft), "-o", ".", "--rank", "1", "--force"], says="did not write")


def test_a_symlinked_output_is_written_through(peft: Path, tmp_path: Path) -> None:
    target = tmp_path / "reports" / "latest.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "report.json"
    link.symlink_to(target)
    refused(["inspect", str(peft), "-f", "json", "-o", str(link)], says="already exists")
    result = runner.invoke(app, ["inspect", str(peft), "-f", "json", "-o", str(link), "--force"])
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["kind"] == "inspect"
    no_temporaries(target.parent)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    got: list[bytes] = []

    def read() -> None:
        with path.open("rb") as fh:
            got.append(fh.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    yield path, got
    reader.join(timeout=10)


@pytest.mark.parametrize("via_link", [False, True])
def test_a_fifo_is_opened_not_replaced(
    peft: Path, tmp_path: Path, fifo: tuple[Path, list[bytes]], via_link: bool
) -> None:
    path, got = fifo
    target = path
    if via_link:  # like /dev/stdout → /proc/self/fd/1
        target = tmp_path / "stdout"
        target.symlink_to(path)
    result = runner.invoke(app, ["inspect", str(peft), "-f", "json", "-o", str(target)])
    assert result.exit_code == 0, result.stderr
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert json.loads(got[0])["kind"] == "inspect"
    assert stat.S_ISFIFO(os.lstat(path).st_mode)  # still the FIFO, not a regular file
    no_temporaries(tmp_path)


def test_a_device_node_is_opened_not_replaced(peft: Path, tmp_path: Path) -> None:
    node = tmp_path / "null"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of our own
    except (PermissionError, OSError):
        pytest.skip("cannot create a device node here")
    result = runner.invoke(app, ["inspect", str(peft), "-f", "json", "-o", str(node)])
    assert result.exit_code == 0, result.stderr
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    refused(["compress", str(peft), "-o", str(node), "--rank", "1"], says="not a regular file")
    assert stat.S_ISCHR(os.lstat(node).st_mode)


# --- signals, in-process (fast) and in subprocesses (real) -----------------------------------


@pytest.mark.parametrize("single_file", [False, True])
def test_sigterm_at_the_commit_exits_143(
    peft: Path, kohya: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_file: bool
) -> None:
    source = kohya if single_file else peft
    out = tmp_path / "out" / ("o.safetensors" if single_file else "o")
    before = digest(source)
    monkeypatch.setattr(atomic, "hold_for_tests", lambda: os.kill(os.getpid(), signal.SIGTERM))
    result = runner.invoke(app, ["compress", str(source), "-o", str(out), "--rank", "1"])
    assert result.exit_code == ExitCode.TERMINATED == 143
    assert result.stderr.strip() == "lora-audit: terminated"
    assert list(out.parent.iterdir()) == [] and digest(source) == before


def _compress(source: Path, out: Path, hold: Path | None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("LORA_AUDIT_TEST_HOLD", None)
    if hold is not None:
        env["LORA_AUDIT_TEST_HOLD"] = str(hold)
    command = [sys.executable, "-m", "lora_audit", "compress", str(source), "-o", str(out)]
    return subprocess.Popen(
        [*command, "--rank", "1", "--device", "cpu"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(paths: list[Path], procs: list[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + 120
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            pytest.fail("the writers never reached their commit point")
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("sig", "code", "line", "single_file"),
    [
        (signal.SIGTERM, 143, "lora-audit: terminated", False),
        (signal.SIGINT, 130, "lora-audit: interrupted", True),
    ],
)
def test_signals_leave_no_output(
    peft: Path, kohya: Path, tmp_path: Path, sig: int, code: int, line: str, single_file: bool
) -> None:
    source = kohya if single_file else peft
    out = tmp_path / "out" / ("o.safetensors" if single_file else "o")
    out.parent.mkdir()
    before, hold = digest(source), tmp_path / "hold"
    proc = _compress(source, out, hold)
    _wait_for([Path(f"{hold}.{proc.pid}")], [proc])
    assert [p for p in out.parent.iterdir()], "the temporary output is there while held"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code and stderr.strip() == line, stderr
    assert list(out.parent.iterdir()) == [] and digest(source) == before


def test_sigkill_leftovers_are_removed_by_the_next_run(peft: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "o"
    out.parent.mkdir()
    before, hold = digest(peft), tmp_path / "hold"
    proc = _compress(peft, out, hold)
    _wait_for([Path(f"{hold}.{proc.pid}")], [proc])
    proc.kill()
    proc.wait(timeout=60)
    left = [p.name for p in out.parent.iterdir()]
    assert len(left) == 1 and left[0].startswith(f"{atomic.TMP_PREFIX}") and not out.exists()
    result = runner.invoke(app, ["compress", str(peft), "-o", str(out), "--rank", "1"])
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in out.parent.iterdir()] == ["o"] and digest(peft) == before


@pytest.mark.parametrize("single_file", [False, True])
def test_two_writers_racing_for_one_output(
    peft: Path, kohya: Path, tmp_path: Path, single_file: bool
) -> None:
    source = kohya if single_file else peft
    before = digest(source)
    for round_ in range(2):
        out = tmp_path / f"round{round_}" / ("o.safetensors" if single_file else "o")
        out.parent.mkdir()
        hold = tmp_path / f"hold{round_}"
        procs = [_compress(source, out, hold) for _ in range(2)]
        _wait_for([Path(f"{hold}.{p.pid}") for p in procs], procs)
        hold.touch()  # both have passed every check: release them at once
        results = [(p.wait(timeout=60), p.communicate()[1]) for p in procs]
        codes = sorted(code for code, _ in results)
        assert codes == [0, 2], results
        loser = next(err for code, err in results if code == 2).strip().splitlines()
        assert len(loser) == 1 and "already exists" in loser[0], loser
        assert [p.name for p in out.parent.iterdir()] == [out.name]
        assert load_adapter(out).layers and digest(source) == before
        if not single_file:
            assert sorted(p.name for p in out.iterdir()) == [
                "adapter_config.json",
                "adapter_model.safetensors",
            ]


# --- the primitives, with and without renameat2 ----------------------------------------------


def test_stale_temporaries_of_dead_processes_only(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ours = atomic.temp_prefix()
    host = ours[len(atomic.TMP_PREFIX) :].split("-")[0]
    names = {
        "dead": f"{atomic.TMP_PREFIX}{host}-{dead.pid}-abc.tmp",
        "alive": f"{ours}abc.tmp",
        "parent": f"{atomic.TMP_PREFIX}{host}-{os.getppid()}-abc.tmp",
        "other host": f"{atomic.TMP_PREFIX}00000000-{dead.pid}-abc.tmp",
        "user file": f".lora-audit-{dead.pid}.txt",
    }
    for name in names.values():
        (tmp_path / name).write_text("x")
    (tmp_path / f"{atomic.TMP_PREFIX}{host}-{dead.pid}-dir.tmp").mkdir()
    atomic.remove_stale(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(v for k, v in names.items() if k != "dead")


@pytest.mark.parametrize("renameat2", [True, False])
def test_commit_never_replaces_without_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renameat2: bool
) -> None:
    if not renameat2:
        monkeypatch.setattr(atomic, "_renameat2", lambda src, dst, flags: False)
    for kind in ("file", "dir"):
        target, tmp = tmp_path / f"{kind}-target", tmp_path / f"{kind}-tmp"
        for path, text in ((target, "theirs"), (tmp, "ours")):
            if kind == "dir":
                path.mkdir()
                (path / "adapter_config.json").write_text(text)
            else:
                path.write_text(text)
        with pytest.raises(FileExistsError):
            atomic.commit(str(tmp), str(target), replace=False)
        read = (
            (lambda p: (p / "adapter_config.json").read_text()) if kind == "dir" else Path.read_text
        )
        assert read(target) == "theirs" and read(tmp) == "ours"
        old = atomic.commit(str(tmp), str(target), replace=True)
        assert read(target) == "ours"
        if kind == "dir":
            assert old is not None and read(Path(old)) == "theirs"
            atomic.remove_path(old)
        assert sorted(p.name for p in tmp_path.iterdir() if kind in p.name) == [target.name]
