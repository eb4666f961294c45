"""Audit while training: read a live PEFT model, and hook the audit into trainers.

Nothing here is imported by ``import lora_audit``; torch, PEFT and transformers are imported
only inside the functions that need them, so the package stays torch-free.

* :mod:`lora_audit.integrations.peft_live` — an :class:`~lora_audit.adapter.Adapter` built
  from the LoRA modules of a PEFT model in memory (``lora_audit.inspect_model``).
* :mod:`lora_audit.integrations.run_audit` — what a training run keeps between measurements:
  the metrics logged, the early warnings, the trend points (torch-free).
* :mod:`lora_audit.integrations.transformers` — ``LoraAuditCallback``, a transformers
  ``TrainerCallback`` (also for TRL's trainers, which are Trainers).
"""
