"""Behaviour-unchanged check of a refactor: the same benchmark run on the commit before and after
it must give equal numbers.

Compares pairs of benchmark result JSONs (``before`` and ``after``, written by the same command
on the two commits) value by value, ignoring wall-clock timings (keys containing ``second``,
``time`` or ``wall``), and records every pair's commits, commands, the number of values compared
and any that differ.

Usage::

    python -m benchmarks.refactor_equivalence --name refactor_equivalence \\
        --pair pde BEFORE.json AFTER.json --pair medical BEFORE.json AFTER.json ...

Writes ``benchmarks/results/<name>.json`` with a bar per pair: identical numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks._common import write_result

_TIMING = ("second", "time", "wall")


def _values(obj: Any, path: str = "") -> dict[str, Any]:
    """Flatten a JSON result into ``{path: leaf}``, dropping timing entries."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if not any(t in str(k).lower() for t in _TIMING):
                out.update(_values(v, f"{path}/{k}"))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(_values(v, f"{path}[{i}]"))
        return out
    return {path: obj}


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Value-by-value comparison of two result payloads' ``results``."""
    a, b = _values(before["results"]), _values(after["results"])
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k, "<missing>") != b.get(k, "<missing>"))
    return {
        "before": {"git_commit": before["git_commit"], "command": before["command"]},
        "after": {"git_commit": after["git_commit"], "command": after["command"]},
        "values_compared": len(a.keys() | b.keys()),
        "differences": {k: [a.get(k, "<missing>"), b.get(k, "<missing>")] for k in diff[:50]},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="refactor_equivalence")
    p.add_argument(
        "--pair", nargs=3, action="append", required=True, metavar=("LABEL", "BEFORE", "AFTER")
    )
    a = p.parse_args()
    results = {
        label: compare(json.loads(Path(x).read_text()), json.loads(Path(y).read_text()))
        for label, x, y in a.pair
    }
    bars = {f"{k}: identical numbers": not v["differences"] for k, v in results.items()}
    results["bars"] = bars
    config = {"pairs": [list(pair) for pair in a.pair], "ignored_keys_containing": _TIMING}
    write_result(a.name, results, config=config, seed=None)
    print(json.dumps(bars, indent=1))


if __name__ == "__main__":
    main()
