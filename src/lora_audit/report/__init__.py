"""The finished report: frozen dataclasses with a schema version, and their JSON form.

Renderers receive these objects complete and never compute. ``to_dict`` gives the JSON
contract documented in the README and in ``report/schema/inspect.schema.json``.
"""

from __future__ import annotations

from lora_audit.findings import Finding
from lora_audit.report.check import (
    AdapterError,
    AdapterVerdict,
    CheckReport,
    CheckTotals,
)
from lora_audit.report.common import SCHEMA_VERSION, AdapterInfo, ToolInfo, to_dict
from lora_audit.report.compare import CompareReport, CompareSummary, LayerComparison, ShapeMismatch
from lora_audit.report.compress import (
    CompressReport,
    CompressSettings,
    CompressSummary,
    LayerCompression,
)
from lora_audit.report.full_finetune import (
    CarriedTensor,
    ExtractedLayer,
    ExtractReport,
    FullFinetuneReport,
    FullLayerReport,
    FullSettings,
    FullSummary,
    FullTensorReport,
)
from lora_audit.report.fuse import FuseLayerReport, FuseSchemeSummary, FuseSummary
from lora_audit.report.inspect import (
    AdviceBasis,
    AdviceVerdict,
    InspectReport,
    LayerReport,
    Settings,
    Summary,
)
from lora_audit.report.inspect_base import (
    BaseLayerReport,
    BaseStat,
    BaseSummary,
    IntruderLayerReport,
    IntruderSummary,
)
from lora_audit.report.many import InspectManyReport
from lora_audit.report.rows import AdapterRow, RowVerdict
from lora_audit.report.serving import ServerCheck, Serving
from lora_audit.report.trend import CheckpointSummary, LayerTrend, TrendReport, TrendSettings

__all__ = [
    "SCHEMA_VERSION",
    "AdapterError",
    "AdapterInfo",
    "AdapterRow",
    "AdapterVerdict",
    "AdviceBasis",
    "AdviceVerdict",
    "BaseLayerReport",
    "BaseStat",
    "BaseSummary",
    "CarriedTensor",
    "CheckReport",
    "CheckTotals",
    "CheckpointSummary",
    "CompareReport",
    "CompareSummary",
    "CompressReport",
    "CompressSettings",
    "CompressSummary",
    "ExtractReport",
    "ExtractedLayer",
    "Finding",
    "FullFinetuneReport",
    "FullLayerReport",
    "FullSettings",
    "FullSummary",
    "FullTensorReport",
    "FuseLayerReport",
    "FuseSchemeSummary",
    "FuseSummary",
    "InspectManyReport",
    "InspectReport",
    "IntruderLayerReport",
    "IntruderSummary",
    "LayerComparison",
    "LayerCompression",
    "LayerReport",
    "LayerTrend",
    "RowVerdict",
    "ServerCheck",
    "Serving",
    "Settings",
    "ShapeMismatch",
    "Summary",
    "ToolInfo",
    "TrendReport",
    "TrendSettings",
    "to_dict",
]
