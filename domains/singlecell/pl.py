"""Plotting, scanpy's ``pl`` namespace: the functions of :mod:`.plots` (Axes in, Axes out)."""

from __future__ import annotations

from .plots import (
    branches,
    de_scatter,
    lineage_panels,
    perturbation_panels,
    populations,
    pseudotime_scatter,
)

__all__ = [
    "populations",
    "de_scatter",
    "pseudotime_scatter",
    "branches",
    "perturbation_panels",
    "lineage_panels",
]
