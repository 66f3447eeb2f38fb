"""Checks the Snakemake rules run when a job is scheduled (kept out of the ``.smk`` files,
which Snakemake's linter wants free of function definitions)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

__all__ = ["signal_lead_check", "domain_rules"]

# sbatch's --signal=[{R|B}:]<sig_num>[@sig_time] (sig_time in seconds, default 60)
_SIGNAL = re.compile(r"--signal[= ]['\"]?(?:[RB]+:)?(\w+)(?:@(\d+))?")


def signal_lead_check(resources: Any, *, rule: str = "train") -> str:
    """Refuse a job whose ``slurm_extra`` asks for a signal at least as early as its runtime.

    ``--signal=USR1@T`` makes SLURM send the signal ``T`` seconds before the time limit; with a
    ``runtime`` (minutes) of ``T`` seconds or less it fires as the job starts, training
    checkpoints at once and exits, and every retry does the same. Returns ``""`` when fine.

    Raises
    ------
    ValueError
        Naming the rule, its ``runtime`` and the ``--signal`` option.
    """
    extra = str(getattr(resources, "slurm_extra", "") or "")
    runtime = getattr(resources, "runtime", None)
    m = _SIGNAL.search(extra)
    if m is None or not isinstance(runtime, int | float):
        return ""
    lead = int(m.group(2) or 60)
    if runtime * 60 <= lead:
        raise ValueError(
            f"rule {rule}: runtime={runtime} min but slurm_extra {extra.strip()!r} asks for "
            f"{m.group(1)} {lead} s before the time limit, i.e. as soon as the job starts: give "
            f"the rule a runtime above {lead / 60:g} min or a smaller @seconds in --signal"
        )
    return ""


def domain_rules(domain: str) -> str | None:
    """The domain's own Snakemake rules, ``rules.smk`` in its package, if it ships one."""
    from .task import domain_module

    spec = importlib.util.find_spec(domain_module(domain))
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "rules.smk"
    return str(path) if path.is_file() else None
