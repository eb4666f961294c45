"""Gradience's rank suggestion on the study's saved adapters (its own code, run as is).

Gradience (PyPI ``gradience``, 0.11.0) is not installed into the environment: download the
wheel and unpack it, then point ``--gradience`` at the unpacked directory::

    pip download --no-deps gradience -d /tmp/gradience
    unzip -o /tmp/gradience/gradience-*.whl -d /tmp/gradience/x
    python bench/advice/gradience_audit.py --gradience /tmp/gradience/x

For each audited adapter in ``results.jsonl`` it runs ``audit_lora_peft_dir`` and
``suggest_global_ranks_from_audit`` (the median and p90 of the layers' k@0.9, rounded up to
1, 2, 4 … 64) and appends one line to ``gradience.jsonl`` beside the results
(``<stem>-gradience.jsonl`` for a results file named otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "advice"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gradience", type=Path, default=Path("/tmp/gradience/x"))
    parser.add_argument("--results", type=Path, default=RESULTS / "results.jsonl")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.gradience))
    import torch
    from gradience.vnext.audit.lora_audit import audit_lora_peft_dir
    from gradience.vnext.rank_suggestion import suggest_global_ranks_from_audit

    torch.set_num_threads(1)
    out = gradience_file(args.results)
    seen = (
        {(g["task"], g["rank"], g["seed"]) for g in map(json.loads, out.read_text().splitlines())}
        if out.exists()
        else set()
    )
    for line in args.results.read_text().splitlines():
        record = json.loads(line)
        key = (record["task"], record["rank"], record["seed"])
        if record["kind"] != "train" or "adapter" not in record or key in seen:
            continue
        audit = audit_lora_peft_dir(ROOT / record["adapter"], compute_udr=False).to_summary_dict()
        audit.setdefault("current_r", record["rank"])
        suggestion = suggest_global_ranks_from_audit(audit)
        entry = {
            "task": key[0],
            "rank": key[1],
            "seed": key[2],
            "median": suggestion.suggested_r_median,
            "p90": suggestion.suggested_r_p90,
            "energy_rank_90_p50": audit.get("energy_rank_90_p50"),
            "energy_rank_90_p90": audit.get("energy_rank_90_p90"),
            "gradience_version": "0.11.0",
        }
        with out.open("a") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
        seen.add(key)
        print(entry, flush=True)
    (ROOT / "docs" / "advice").mkdir(parents=True, exist_ok=True)
    if out.exists():
        (ROOT / "docs" / "advice" / out.name).write_text(out.read_text())


def gradience_file(results: Path) -> Path:
    """Where Gradience's suggestions for ``results`` go: ``gradience.jsonl`` beside the
    first study's ``results.jsonl``, ``<stem>-gradience.jsonl`` beside any other."""
    name = "gradience.jsonl" if results.stem == "results" else f"{results.stem}-gradience.jsonl"
    return results.parent / name


if __name__ == "__main__":
    main()
