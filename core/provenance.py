"""Provenance records: what produced an output (config, seed, versions, git commit, machine)."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["provenance", "write_json_atomic"]

#: The core's own dependencies; a task adds its domain's (``Task.packages``).
_PACKAGES = ("diffsci", "torch", "monai", "numpy", "scipy", "snakemake", "h5py")


def _git_commit(path: Path) -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=path,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(
    *,
    config: dict[str, Any] | None = None,
    seed: int | None = None,
    packages: Sequence[str] = (),
) -> dict[str, Any]:
    """A JSON-serialisable record of how an output was made; ``packages`` are listed with their
    versions besides the core's."""
    versions = {}
    for name in dict.fromkeys((*_PACKAGES, *packages)):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "config": config or {},
        "seed": seed,
        "versions": versions,
        "git_commit": _git_commit(Path(__file__).resolve().parent),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
    }


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON to ``path`` via a temporary file and ``os.replace`` (never half-written)."""
    from .fileio import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path
