"""lora_audit.fleet: the distributed recipe's lines equal the CLI's ``--format jsonl``."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lora_audit
from lora_audit import fleet
from lora_audit.cli import app

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "lora_audit" / "samples" / "minilm-r4-bf16"
runner = CliRunner()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "fleet"
    for i in range(3):
        shutil.copytree(SAMPLE, root / f"a{i}")
    (root / "b-bad.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{broken}")
    return root


def cli_lines(folder: Path) -> list[str]:
    result = runner.invoke(app, ["inspect", str(folder), "-f", "jsonl", "--no-config"])
    assert result.exit_code == 3, result.stderr  # the broken file
    return result.stdout.splitlines(keepends=True)


def test_lines_equal_the_cli_in_one_process(folder: Path) -> None:
    paths = fleet.adapter_paths(folder)
    lines = [fleet.inspect_line(p) for p in paths]
    assert [*lines, fleet.summary_line(lines)] == cli_lines(folder)


def test_what_ships_to_workers_pickles(folder: Path) -> None:
    for fn in (fleet.inspect_line, fleet.summary_line, lora_audit.inspect):
        assert pickle.loads(pickle.dumps(fn)) is fn
    report = lora_audit.inspect(folder / "a0")
    assert pickle.loads(pickle.dumps(report)) == report


def test_the_dask_recipe_on_a_local_cluster_equals_the_cli(folder: Path) -> None:
    pytest.importorskip("dask.bag")
    distributed = pytest.importorskip("distributed")
    import dask.bag as db

    paths = fleet.adapter_paths(folder)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster, timeout="30s") as client,
    ):
        bag = db.from_sequence(paths, partition_size=2).map(fleet.inspect_line)
        lines = client.compute(bag).result(timeout=60)
    assert [*lines, fleet.summary_line(lines)] == cli_lines(folder)
