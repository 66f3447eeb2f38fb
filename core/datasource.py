"""Where a domain's data come from: ``source.kind: simulate`` (the demo and benchmarks) or the
user's own ``files``, split into train / validation / test in the config.

The config block (``$defs/source`` of ``core/config.schema.yaml``)::

    source:
      kind: files
      train: [data/raw/train/*.h5]      # paths or globs, relative to the working directory
      validation: [data/raw/val.h5]     # optional
      test: [data/raw/test/*.h5]

The domain's ``prepare`` reads those files with its ``io`` readers and writes the pipeline's own
layout into the data folder, so the later stages do not care where the data came from.
:func:`fingerprint` identifies the exact bytes a model was trained on (model card, checkpoint).
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FileSplits", "SPLITS", "resolve_source", "fingerprint", "expand_paths"]

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class FileSplits:
    """The user's files of each split (sorted, existing, no file in two splits)."""

    train: tuple[Path, ...]
    validation: tuple[Path, ...]
    test: tuple[Path, ...]

    def items(self) -> Iterable[tuple[str, tuple[Path, ...]]]:
        return ((s, getattr(self, s)) for s in SPLITS)


def expand_paths(patterns: Iterable[str], *, key: str) -> tuple[Path, ...]:
    """Paths and globs -> existing files or folders (a zarr store, a DICOM series folder),
    sorted within each pattern, the order of the patterns kept.

    Raises
    ------
    FileNotFoundError
        Naming the config key and the pattern that matched nothing.
    """
    out: list[Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(str(pat), recursive=True)) if glob.has_magic(str(pat)) else [pat]
        files = [Path(h) for h in hits if Path(h).exists()]
        if not files:
            raise FileNotFoundError(
                f"config {key}: {pat!r} matches no file or folder (paths are relative to the working "
                f"directory {Path.cwd()})"
            )
        out += [f for f in files if f not in out]
    return tuple(out)


def resolve_source(cfg: Mapping[str, Any]) -> FileSplits | None:
    """The user's files of ``cfg["source"]``, or ``None`` for ``kind: simulate``."""
    src = cfg.get("source") or {"kind": "simulate"}
    if src.get("kind", "simulate") == "simulate":
        return None
    for need in ("train", "test"):
        if not src.get(need):
            raise ValueError(f"config source.{need}: needed with source.kind files (a file list)")
    splits = {s: expand_paths(src.get(s) or [], key=f"source.{s}") for s in SPLITS}
    seen: dict[Path, str] = {}
    for s, files in splits.items():
        for f in files:
            if f.resolve() in seen:
                raise ValueError(
                    f"{f}: listed in both source.{seen[f.resolve()]} and source.{s}; a file "
                    "belongs to one split (held-out data must not be trained on)"
                )
            seen[f.resolve()] = s
    return FileSplits(**splits)


#: Files left out of a folder's fingerprint: records of how it was made, not data.
_NOT_DATA = ("provenance.json",)


def fingerprint(paths: Iterable[str | Path], *, chunk: int = 1 << 20) -> str:
    """SHA-256 over the names, sizes and bytes of ``paths`` (files, or folders walked in sorted
    order, without their ``provenance.json``): the identity of a dataset."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.is_file() and q.name not in _NOT_DATA)
        else:
            files.append(p)
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + str(f.stat().st_size).encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()
