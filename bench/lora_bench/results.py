"""What the benchmark measured, as frozen dataclasses, and their JSON form.

Every ``to_dict`` writes the keys ``bench.json`` has always had; ``from_dict`` reads them
back (the in-process workers send their results as JSON, and the tables can be rebuilt from
an old ``bench.json``).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MB = 1024 * 1024
#: Peak RSS budget of ``inspect`` beyond the size of the file.
RSS_SLACK_BYTES = 300 * MB

Json = dict[str, Any]


@dataclass(frozen=True)
class Timing:
    """Seconds of repeated runs (min and median), and the largest peak RSS when measured."""

    runs: tuple[float, ...]
    min: float
    median: float
    max_rss_bytes: int | None = None

    @classmethod
    def of(cls, seconds: Sequence[float], *, rss: Sequence[int] | None = None) -> Timing:
        return cls(
            runs=tuple(round(s, 4) for s in seconds),
            min=min(seconds),
            median=statistics.median(seconds),
            max_rss_bytes=max(rss) if rss else None,
        )

    def to_dict(self) -> Json:
        out: Json = {"runs": list(self.runs), "min": self.min, "median": self.median}
        if self.max_rss_bytes is not None:
            out["max_rss_bytes"] = self.max_rss_bytes
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Timing:
        return cls(tuple(d["runs"]), d["min"], d["median"], d.get("max_rss_bytes"))


@dataclass(frozen=True)
class InspectRun:
    """``lora-audit inspect`` as a whole process on one device."""

    device: str
    timing: Timing

    def to_dict(self) -> Json:
        return {**self.timing.to_dict(), "device": self.device}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InspectRun:
        return cls(d["device"], Timing.from_dict(d))


@dataclass(frozen=True)
class EnginePoint:
    """The floor and the engine in one process, for an adapter or its first layers.

    ``floor`` reads and upcasts every factor (on CUDA: copies it to the GPU and upcasts
    there); ``h2d`` is the bare host-to-device copy, on CUDA only.
    """

    device: str
    layers: int
    bytes: int
    floor: Timing
    engine: Timing
    h2d: Timing | None = None
    max_gpu_bytes: int | None = None

    def to_dict(self) -> Json:
        out: Json = {"device": self.device, "layers": self.layers, "bytes": self.bytes}
        if self.h2d is not None:
            out["h2d"] = self.h2d.to_dict()
        out["floor"] = self.floor.to_dict()
        out["engine"] = self.engine.to_dict()
        if self.max_gpu_bytes is not None:
            out["max_gpu_bytes"] = self.max_gpu_bytes
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnginePoint:
        h2d = Timing.from_dict(d["h2d"]) if "h2d" in d else None
        return cls(
            d["device"],
            d["layers"],
            d["bytes"],
            Timing.from_dict(d["floor"]),
            Timing.from_dict(d["engine"]),
            h2d,
            d.get("max_gpu_bytes"),
        )


@dataclass(frozen=True)
class DenseShape:
    """The dense SVD of one ΔW shape: seconds per sampled matrix, extrapolated to all.

    ``max_rel_diff_vs_engine`` is ``None`` when the timing was reused from an earlier
    adapter of this run (``reused``).
    """

    out: int
    inp: int
    count: int
    seconds: tuple[float, ...]
    max_rel_diff_vs_engine: float | None
    reused: bool = False

    @property
    def extrapolated_seconds(self) -> float:
        return statistics.median(self.seconds) * self.count

    def to_dict(self) -> Json:
        out: Json = {"out": self.out, "in": self.inp, "count": self.count}
        out["seconds"] = list(self.seconds)
        if self.max_rel_diff_vs_engine is not None:
            out["max_rel_diff_vs_engine"] = self.max_rel_diff_vs_engine
        if self.reused:
            out["reused"] = True
        out["extrapolated_seconds"] = self.extrapolated_seconds
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DenseShape:
        return cls(
            d["out"],
            d["in"],
            d["count"],
            tuple(d["seconds"]),
            d.get("max_rel_diff_vs_engine"),
            bool(d.get("reused", False)),
        )


@dataclass(frozen=True)
class DenseBaseline:
    """The dense approach on one device: every shape, and the extrapolated total."""

    device: str
    shapes: tuple[DenseShape, ...]
    max_rss_bytes: int

    @property
    def extrapolated_seconds(self) -> float:
        return sum(s.extrapolated_seconds for s in self.shapes)

    def to_dict(self) -> Json:
        return {
            "device": self.device,
            "shapes": [s.to_dict() for s in self.shapes],
            "max_rss_bytes": self.max_rss_bytes,
            "extrapolated_seconds": self.extrapolated_seconds,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DenseBaseline:
        shapes = tuple(DenseShape.from_dict(s) for s in d["shapes"])
        return cls(d["device"], shapes, d["max_rss_bytes"])


@dataclass(frozen=True)
class CompressRun:
    """``lora-audit compress`` against the floor plus writing as many bytes as it wrote."""

    process: Timing
    output_bytes: int
    floor_write: Timing


@dataclass(frozen=True)
class Row:
    """Everything measured for one adapter (one model size at one rank)."""

    size: str
    rank: int
    layers: int
    matrices: int
    file_bytes: int
    adapter: str
    floor_process: Timing
    floor_numpy_process: Timing | None
    inspect: tuple[InspectRun, ...]  # the requested device first, then the CPU on CUDA
    in_process: EnginePoint
    in_process_cpu: EnginePoint | None = None
    compress: CompressRun | None = None
    compress_error: str | None = None
    dense: tuple[DenseBaseline, ...] = ()

    def dense_on(self, device: str) -> DenseBaseline | None:
        return next((d for d in self.dense if d.device == device), None)

    def to_dict(self) -> Json:
        out: Json = {
            "size": self.size,
            "rank": self.rank,
            "layers": self.layers,
            "matrices": self.matrices,
            "file_bytes": self.file_bytes,
            "adapter": self.adapter,
            "floor_process": self.floor_process.to_dict(),
        }
        if self.floor_numpy_process is not None:
            out["floor_numpy_process"] = self.floor_numpy_process.to_dict()
        for key, run in zip(("inspect_process", "inspect_process_cpu"), self.inspect, strict=False):
            out[key] = run.to_dict()
        out["in_process"] = self.in_process.to_dict()
        if self.in_process_cpu is not None:
            out["in_process_cpu"] = self.in_process_cpu.to_dict()
        if self.compress is not None:
            out["compress_process"] = self.compress.process.to_dict()
            out["compress_output_bytes"] = self.compress.output_bytes
            out["floor_write_process"] = self.compress.floor_write.to_dict()
        if self.compress_error is not None:
            out["compress_error"] = self.compress_error
        if self.dense:
            out["dense"] = {d.device: d.to_dict() for d in self.dense}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Row:
        inspect = tuple(
            InspectRun.from_dict(d[k]) for k in ("inspect_process", "inspect_process_cpu") if k in d
        )
        compress = None
        if "compress_process" in d:
            compress = CompressRun(
                Timing.from_dict(d["compress_process"]),
                d["compress_output_bytes"],
                Timing.from_dict(d["floor_write_process"]),
            )
        numpy_floor = d.get("floor_numpy_process")
        cpu = d.get("in_process_cpu")
        return cls(
            size=d["size"],
            rank=d["rank"],
            layers=d["layers"],
            matrices=d["matrices"],
            file_bytes=d["file_bytes"],
            adapter=d["adapter"],
            floor_process=Timing.from_dict(d["floor_process"]),
            floor_numpy_process=Timing.from_dict(numpy_floor) if numpy_floor else None,
            inspect=inspect,
            in_process=EnginePoint.from_dict(d["in_process"]),
            in_process_cpu=EnginePoint.from_dict(cpu) if cpu else None,
            compress=compress,
            compress_error=d.get("compress_error"),
            dense=tuple(DenseBaseline.from_dict(x) for x in d.get("dense", {}).values()),
        )
