"""Inputs that hung or flooded, and signals that did not stop the process (issue 23).

On 0.2.0 a kohya file with a 60 MB ``ss_training_comment`` kept ``inspect``'s table busy for
over ten minutes and ignored SIGTERM; a header of 1.2 million unknown keys took 27 s and
1.2 GB before its warning. Python runs a signal handler only between bytecodes, so a handler
cannot stop one long C call (LAPACK here): outside the moments a temporary output exists the
signals are left to the kernel, which ends the process at once (returncode ``-15``, which a
shell reports as 143).
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SAMPLES
from hostile.builders import SRC

from lora_audit.formats import atomic, load_adapter
from lora_audit.formats.safetensors_io import MAX_TENSORS

KOHYA = SAMPLES / "sd" / "kohya-lora.safetensors"
COMMENT_CHARS = 60 << 20  # 62,914,560


def env() -> dict[str, str]:
    out = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "100", "NO_COLOR": "1"}
    out.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out.pop("CI", None)
    return out


def start(args: list[str], *, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from lora_audit.cli import main; main()", *args],
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], *, timeout: float = 120) -> tuple[str, str]:
    """Its stdout and stderr; killed (and the test failed) when it runs past ``timeout``."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"still running after {timeout} s")


@pytest.fixture(scope="module")
def long_comment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample kohya file with a 60 MiB ``ss_training_comment``."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(KOHYA), "np") as fh:
        metadata = dict(fh.metadata() or {})
    metadata["ss_training_comment"] = "[b]" + "x" * (COMMENT_CHARS - 3)  # markup, too
    path = tmp_path_factory.mktemp("long") / "lora.safetensors"
    save_file(load_file(str(KOHYA)), str(path), metadata=metadata)
    return path


def test_a_table_shows_a_few_hundred_characters_of_a_metadata_value(
    long_comment: Path, tmp_path: Path
) -> None:
    proc = start(["inspect", str(long_comment)], cwd=tmp_path)
    out, err = finish(proc)
    assert proc.returncode == 0, err
    assert f"… ({COMMENT_CHARS:,} characters)" in " ".join(out.split())  # may wrap
    assert len(out) < 20_000 and max(len(line) for line in out.splitlines()) <= 100
    proc = start(["inspect", str(long_comment), "-f", "json"], cwd=tmp_path)
    out, err = finish(proc)
    assert proc.returncode == 0, err
    assert f'"ss_training_comment": "[b]{"x" * 50}' in out and len(out) > COMMENT_CHARS


def _terminated_within_a_second(
    proc: subprocess.Popen[str], *, after: float, sig: int = signal.SIGTERM
) -> None:
    time.sleep(after)
    assert proc.poll() is None, proc.communicate()
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=5)
    finally:
        proc.kill()
    took = time.monotonic() - sent
    assert proc.returncode == -sig, proc.communicate()  # the shell's 143 (SIGTERM), 130 (^C)
    assert took < 1.0, took


_UNCLIPPED_TABLE = """
import sys
import lora_audit.render.table.inspect as table
table.clipped = lambda text: text  # the 0.2.0 table: rich lays out the whole 60 MB value
from lora_audit.cli import main
sys.argv = ["lora-audit", *sys.argv[1:]]
main()
"""


def test_sigterm_during_the_long_table_stops_it_and_leaves_no_file(
    long_comment: Path, tmp_path: Path
) -> None:
    """The table of 0.2.0 (minutes of layout; the clipped one takes a second) is surely
    running after a few seconds: the signal must end it within one, writing nothing."""
    args = ["inspect", str(long_comment), "-o", str(tmp_path / "report.txt")]
    proc = subprocess.Popen(
        [sys.executable, "-c", _UNCLIPPED_TABLE, *args],
        cwd=tmp_path,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _terminated_within_a_second(proc, after=5.0)
    assert list(tmp_path.iterdir()) == []


_LAPACK = """
import sys
import numpy as np
from lora_audit.cli._common import run_guarded

def body():
    a = np.random.default_rng(0).standard_normal((3000, 3000))
    print("ready", flush=True)
    np.linalg.svd(a)  # one LAPACK call of many seconds: no bytecode runs until it returns
    print("finished", flush=True)
    return 0

run_guarded(body)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_long_lapack_call_stops_it_at_once(tmp_path: Path, sig: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAPACK],
        cwd=tmp_path,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    _terminated_within_a_second(proc, after=0.3, sig=sig)
    assert "finished" not in proc.communicate()[0]


def test_signals_are_caught_only_while_a_temporary_path_exists(tmp_path: Path) -> None:
    """In-process: the handlers that clean up are in place exactly while a temporary path
    is live, and SIG_DFL otherwise; the previous handlers come back at the end."""
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with atomic.signals_end_at_once():
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
        fd, path = atomic.new_temp_file(tmp_path)
        os.close(fd)
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGINT) not in (signal.SIG_DFL, signal.SIG_IGN)
        assert Path(path).name.startswith(atomic.temp_prefix())
        atomic.remove_path(path)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert list(tmp_path.iterdir()) == []


def test_an_ignored_signal_stays_ignored(tmp_path: Path) -> None:
    """``lora-audit … &`` in a script runs with SIGINT ignored: ^C must not stop it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with atomic.signals_end_at_once():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            fd, path = atomic.new_temp_file(tmp_path)
            os.close(fd)
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
            atomic.remove_path(path)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def _many_keys(path: Path, count: int) -> Path:
    """A kohya file with one real layer and ``count`` empty tensors of unknown names."""
    real = KOHYA.read_bytes()
    (n,) = struct.unpack("<Q", real[:8])
    header, data = real[8 : 8 + n].decode().rstrip(), real[8 + n :]
    end = len(data)
    extra = ",".join(
        f'"x{i}":{{"dtype":"F32","shape":[0],"data_offsets":[{end},{end}]}}' for i in range(count)
    )
    text = (header[:-1] + "," + extra + "}").encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_a_header_of_too_many_tensors_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = _many_keys(tmp_path / "many.safetensors", MAX_TENSORS + 1)
    started = time.monotonic()
    proc = start(["inspect", str(path), "-f", "json"], cwd=tmp_path)
    out, err = finish(proc)
    assert proc.returncode == 3 and out == "", err
    lines = err.strip().splitlines()
    stored = len(load_adapter(KOHYA).layers) * 3  # down, up, alpha
    assert len(lines) == 1 and f"lists {MAX_TENSORS + 1 + stored:,} tensors" in lines[0], err
    assert time.monotonic() - started < 10


def test_a_header_of_a_few_unknown_keys_is_still_read(tmp_path: Path) -> None:
    path = _many_keys(tmp_path / "some.safetensors", 10)
    proc = start(["inspect", str(path), "-f", "json"], cwd=tmp_path)
    _, err = finish(proc)
    assert proc.returncode == 0, err
    assert "10 key(s) match no known pattern" in err
