"""The venv's workflow tools for tests that run Snakemake or the ``diffsci`` CLI in a subprocess
(pytest may run as ``.venv/bin/python`` without ``.venv/bin`` on PATH): one thread per process,
since xdist already runs one worker per core."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["BIN", "ENV", "SNAKEMAKE"]

BIN = Path(sys.executable).parent
_PATH = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
SNAKEMAKE = shutil.which("snakemake", path=_PATH)
ENV = {**os.environ, "PATH": _PATH, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
