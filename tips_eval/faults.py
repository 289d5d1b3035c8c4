"""Fault injection for the reliability harness (off unless ``TIPS_EVAL_FAULT`` is set).

``TIPS_EVAL_FAULT="record_write:2,train_step:15"`` makes the process SIGKILL
itself the 2nd time it is about to publish a record and the 15th time it
takes a probe training step. The named points sit where an interruption
hurts most: mid-shard during extraction (``extract_batch``), during probe
training (``train_step``, ``sweep_step``) and between writing a record's temp
file and renaming it (``record_write``). Costs one dict lookup when unset.
"""

from __future__ import annotations

import os
import signal

POINTS = ("extract_batch", "train_step", "sweep_step", "record_write")


def _parse(spec: str | None) -> dict[str, int]:
    plan = {}
    for part in (spec or "").split(","):
        if part.strip():
            name, _, n = part.strip().partition(":")
            if name not in POINTS:
                raise ValueError(f"TIPS_EVAL_FAULT: unknown point {name!r}; expected one of {POINTS}")
            plan[name] = int(n or 1)
    return plan


_PLAN = _parse(os.environ.get("TIPS_EVAL_FAULT"))
_SEEN: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILL this process if the plan says so for this passage of ``name``."""
    if not _PLAN:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _PLAN.get(name) == _SEEN[name]:
        os.kill(os.getpid(), signal.SIGKILL)
