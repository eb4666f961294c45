"""The retraining-advice rule: a named, versioned choice, and the evidence it rests on.

``inspect`` advises "retrain at r=k" by one rule (:func:`lora_audit.decisions.retrain_advice.
plan_retrain` applies it). The rule and what it was validated on live here, in one constant,
:data:`DEFAULT_ADVICE_RULE`: change the rule there (and raise its ``version``), and every
output that carries the advice (``inspect``'s table, Markdown and JSON, ``check``'s fix text,
``inspect`` of many adapters, the Python API) follows it, and names the new version.

The rule's τ is its own: it is the energy fraction the *retraining* rank is sized at, which a
retraining study calibrates. It is not ``--energy``, the fraction ``compress`` keeps exactly
(and that the waste figures and ``check``'s waste rules measure); the two are the same number
only while the default rule happens to use τ = 0.99. ``--coverage`` overrides the rule's
quantile; the report then marks the rule as ``custom`` (not the one its basis describes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from lora_audit import HOME

#: How the quantile is rounded to a rank: up to a power of two, or used as is.
Rounding = Literal["pow2", "none"]


@dataclass(frozen=True, kw_only=True)
class AdviceBasis:
    """What a rule was validated on (shown with every advice it gives).

    Attributes
    ----------
    tasks
        The tasks (model and data) on which retraining at the advised rank was measured;
        empty while the rule has not been calibrated by retraining.
    seeds
        Seeds per configuration in that study (0 when there is none).
    tolerance
        What "as good as the original" meant there, in words.
    docs
        Where the study is (``docs/advice.md``).
    not_validated_on
        Kinds of models and tasks the rule was *not* validated on.
    """

    tasks: tuple[str, ...]
    seeds: int
    tolerance: str
    docs: str
    not_validated_on: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class AdviceRule:
    """How the adapter-wide retraining rank is chosen from the layers' spectra.

    Attributes
    ----------
    id, version
        The rule's name and version; bump ``version`` whenever a value below changes, so that
        automation reading the JSON report sees it.
    tau
        Each layer's ``k_ℓ`` is its energy rank at this τ, in (0, 1].
    quantile
        The global rank is this quantile of the trained layers' ``k_ℓ``, in (0, 1]
        (0.5 is the median).
    rounding
        ``"pow2"``: ranks are rounded up to a power of two; ``"none"``: used as they are.
    rank_pattern
        Whether layers needing more than the global rank get a ``rank_pattern`` entry.
    basis
        What the rule was validated on.
    custom
        The quantile was overridden (``--coverage``): not the rule the basis describes.
    """

    id: str
    version: int
    tau: float
    quantile: float
    rounding: Rounding
    rank_pattern: bool
    basis: AdviceBasis
    custom: bool = False

    def with_quantile(self, quantile: float) -> AdviceRule:
        """This rule at another quantile (``--coverage``); ``custom`` when it differs."""
        if quantile == self.quantile:
            return self
        return dataclasses.replace(self, quantile=quantile, custom=True)

    @property
    def label(self) -> str:
        """``k@0.99-p90-pow2 v1`` (``, custom p75`` when the quantile was overridden)."""
        custom = f", custom {quantile_name(self.quantile)}" if self.custom else ""
        return f"{self.id} v{self.version}{custom}"


def quantile_name(q: float) -> str:
    """``median`` for 0.5, else ``p90``-style (``p87.5`` when not a whole percent)."""
    if q == 0.5:
        return "median"
    return f"p{q * 100:.4g}"


#: THE default advice rule: the only place its values live. The issue-#22 study
#: (bench/advice, docs/advice.md) chooses the values; edit them here and bump ``version``.
DEFAULT_ADVICE_RULE = AdviceRule(
    id="k@0.9-p90-pow2",
    version=2,
    tau=0.9,
    quantile=0.9,
    rounding="pow2",
    rank_pattern=True,
    basis=AdviceBasis(
        # The 400-step study (docs/advice.md): all-MiniLM-L6-v2, PEFT LoRA on every encoder
        # Linear, r = 1-64, 3 seeds. Of 18 candidate rules and Gradience's two, this is the one
        # that saves the most parameters while its advice, retrained, stays within tolerance on
        # every original whose seed std is at most 1 point, and half of it fails (library r=64).
        tasks=(
            "MiniLM-L6 docstring library (8 classes, 400 steps)",
            "MiniLM-L6 docstring kind (3 classes, 400 steps)",
        ),
        seeds=3,
        tolerance="worst retrained seed >= worst original seed - 1 point, where seed std <= 1",
        docs=f"{HOME}/blob/main/docs/advice.md",
        not_validated_on=(
            "decoder LLMs",
            "diffusion models",
            "runs much longer than 400 steps",
            "rsLoRA, DoRA and alpha/r other than 2",
        ),
    ),
)
