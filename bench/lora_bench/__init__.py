"""The benchmark behind ``bench/bench.py``, in three parts.

:mod:`.synthesis` writes the synthetic adapters; :mod:`.processes` and :mod:`.in_process`
time the peers and lora-audit (whole processes, and the engine inside one); :mod:`.results`
holds what was measured as frozen dataclasses (and their JSON form); :mod:`.tables` formats
them as Markdown. ``bench/bench.py`` is the command line that runs them in order.
"""
