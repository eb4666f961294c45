"""The whole run: the machine, every row, the scaling sweeps and the targets they meet."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lora_bench.results import MB, RSS_SLACK_BYTES, EnginePoint, Json, Row, Timing


@dataclass(frozen=True)
class LinearFit:
    """Least-squares line ``y = intercept + slope·x`` and its R²."""

    intercept: float
    slope: float
    r2: float

    def to_dict(self) -> Json:
        return {"intercept": self.intercept, "slope": self.slope, "r2": self.r2}


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> LinearFit:
    """Least-squares ``y = a + b·x`` with R²."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return LinearFit(intercept, slope, 1 - ss_res / ss_tot if ss_tot else 1.0)


@dataclass(frozen=True)
class LayerPoint:
    """Engine time of the first ``layers`` decoder layers of one adapter."""

    layers: int
    point: EnginePoint

    def to_dict(self) -> Json:
        p = self.point
        return {
            "layers": self.layers,
            "matrices": p.layers,
            "engine": p.engine.to_dict(),
            "floor": p.floor.to_dict(),
        }


@dataclass(frozen=True)
class RankPoint:
    """Engine time of one adapter of rank ``rank``; ``gram_flops`` its two syrk products."""

    rank: int
    point: EnginePoint
    gram_flops: int

    def to_dict(self) -> Json:
        p = self.point
        return {
            "rank": self.rank,
            "engine": p.engine.to_dict(),
            "floor": p.floor.to_dict(),
            "bytes": p.bytes,
            "gram_flops": self.gram_flops,
        }


@dataclass(frozen=True)
class Scaling:
    """How engine time grows with the number of layers, and with r."""

    size: str
    device: str
    layers: tuple[LayerPoint, ...]
    layers_fit: LinearFit
    ranks: tuple[RankPoint, ...]
    ranks_layers: int
    base_rank: int

    def to_dict(self) -> Json:
        return {
            "size": self.size,
            "device": self.device,
            "layers": [p.to_dict() for p in self.layers],
            "layers_fit": self.layers_fit.to_dict(),
            "ranks": [p.to_dict() for p in self.ranks],
            "ranks_layers": self.ranks_layers,
            "base_rank": self.base_rank,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scaling:
        def point(p: Mapping[str, Any], layers: int, nbytes: int) -> EnginePoint:
            floor, engine = Timing.from_dict(p["floor"]), Timing.from_dict(p["engine"])
            return EnginePoint(d["device"], layers, nbytes, floor, engine)

        fit = d["layers_fit"]
        return cls(
            d["size"],
            d["device"],
            tuple(LayerPoint(p["layers"], point(p, p["matrices"], 0)) for p in d["layers"]),
            LinearFit(fit["intercept"], fit["slope"], fit["r2"]),
            tuple(
                RankPoint(p["rank"], point(p, 0, p["bytes"]), p["gram_flops"]) for p in d["ranks"]
            ),
            d["ranks_layers"],
            d["base_rank"],
        )


@dataclass(frozen=True)
class Target:
    """One of the performance targets (issue 6), evaluated on this run's figures."""

    target: str
    value: str
    met: bool

    def to_dict(self) -> Json:
        return {"target": self.target, "value": self.value, "met": self.met}


@dataclass(frozen=True)
class Report:
    """Everything one run of the benchmark measured."""

    command: str
    machine: Json  # cpu, cpu_count, memory_bytes, python, torch, torch_threads, platform[, gpu]
    device: str
    repeats: int
    help: Timing
    results: tuple[Row, ...]
    scaling: Scaling | None = None
    targets: tuple[Target, ...] = ()
    page_cache: str = "warm: the adapter file is read into the page cache before every timed run"

    def to_dict(self) -> Json:
        out: Json = {
            "command": self.command,
            "machine": self.machine,
            "device": self.device,
            "repeats": self.repeats,
            "page_cache": self.page_cache,
            "results": [r.to_dict() for r in self.results],
            "help": self.help.to_dict(),
        }
        if self.scaling is not None:
            out["scaling"] = self.scaling.to_dict()
        out["targets"] = [t.to_dict() for t in self.targets]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Report:
        return cls(
            d["command"],
            d["machine"],
            d["device"],
            d["repeats"],
            Timing.from_dict(d["help"]),
            tuple(Row.from_dict(r) for r in d["results"]),
            Scaling.from_dict(d["scaling"]) if "scaling" in d else None,
            tuple(Target(t["target"], t["value"], t["met"]) for t in d.get("targets", [])),
            d.get("page_cache", cls.page_cache),
        )


def targets(help_seconds: float, rows: Sequence[Row]) -> tuple[Target, ...]:
    """The issue's targets, evaluated on this run's figures (min over repeats)."""
    checks = [Target("`lora-audit --help` < 0.3 s", f"{help_seconds:.3f} s", help_seconds < 0.3)]
    for row in rows:
        tag = f"{row.size} r={row.rank}"
        for run in row.inspect:
            ratio = run.timing.min / row.floor_process.min
            checks.append(
                Target(
                    f"{tag}: inspect --device {run.device} ≤ 1.3× floor (whole process)",
                    f"{ratio:.2f}×",
                    ratio <= 1.3,
                )
            )
            rss = run.timing.max_rss_bytes or 0
            budget = row.file_bytes + RSS_SLACK_BYTES
            checks.append(
                Target(
                    f"{tag}: inspect --device {run.device} peak RSS ≤ file + 300 MB",
                    f"{rss / MB:.0f} MB ≤ {budget / MB:.0f} MB",
                    rss <= budget,
                )
            )
        h2d = row.in_process.h2d
        if row.in_process.device == "cuda" and h2d is not None:
            g = row.in_process.engine.min / h2d.min
            checks.append(
                Target(f"{tag}: GPU engine ≤ 1.5× host-to-device copy", f"{g:.2f}×", g <= 1.5)
            )
        if row.compress is not None:
            c = row.compress.process.min / row.compress.floor_write.min
            checks.append(Target(f"{tag}: compress ≤ 2× (floor + write)", f"{c:.2f}×", c <= 2.0))
    return tuple(checks)
