"""A self-contained HTML report: metric tables (model vs baselines), figures, provenance.

Figures are embedded as base64 PNGs so the report is one file a person can mail or open on a
laptop after copying it off the cluster.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_report"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
td.best{font-weight:bold;background:#eef8ee}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}
pre{background:#f7f7f7;padding:0.8em;overflow-x:auto;font-size:12px}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(name: str, rows: dict[str, dict[str, Any]], lower_better: Sequence[str]) -> str:
    methods = list(rows)
    metrics: list[str] = []
    for r in rows.values():
        metrics += [m for m in r if m not in metrics]
    best: dict[str, str] = {}
    for m in metrics:
        vals = {k: rows[k][m] for k in methods if isinstance(rows[k].get(m), (int, float))}
        if vals and m in lower_better:
            best[m] = min(vals, key=vals.get)
    out = [f"<h3>{html.escape(name)}</h3><table><tr><th>method</th>"]
    out += [f"<th>{html.escape(m)}</th>" for m in metrics] + ["</tr>"]
    for k in methods:
        out.append(f"<tr><td>{html.escape(k)}</td>")
        for m in metrics:
            cls = ' class="best"' if best.get(m) == k else ""
            out.append(f"<td{cls}>{_fmt(rows[k].get(m, ''))}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def write_report(path: str | os.PathLike, metrics_files: Sequence[str | os.PathLike], *,
                 title: str = "diffsci report") -> Path:  # fmt: skip
    """Render one HTML page from ``metrics.json`` files written by the evaluate stage.

    Each file holds ``tables`` (``{table: {method: {metric: value}}}``), optional
    ``lower_is_better`` (metric names, highlighted per column), ``figures`` (paths relative to
    the metrics file), ``summary`` and ``provenance``.
    """
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]  # fmt: skip
    for mf in metrics_files:
        mf = Path(mf)
        if not mf.is_file():
            raise FileNotFoundError(f"metrics file not found: {mf} (run the evaluate stage)")
        res = json.loads(mf.read_text())
        parts.append(f"<h2>{html.escape(str(res.get('domain', mf.parent.name)))}</h2>")
        if res.get("summary"):
            parts.append("<ul>" + "".join(f"<li>{html.escape(str(k))}: {_fmt(v)}</li>"
                                          for k, v in res["summary"].items()) + "</ul>")  # fmt: skip
        for name, rows in res.get("tables", {}).items():
            parts.append(_table(name, rows, res.get("lower_is_better", [])))
        for fig in res.get("figures", []):
            p = mf.parent / fig
            if p.is_file():
                b64 = base64.b64encode(p.read_bytes()).decode()
                parts.append(f"<figure><img src='data:image/png;base64,{b64}'>"
                             f"<figcaption>{html.escape(p.stem)}</figcaption></figure>")  # fmt: skip
        prov = res.get("provenance")
        if prov:
            parts.append("<details><summary>provenance</summary><pre>"
                         + html.escape(json.dumps(prov, indent=2)) + "</pre></details>")  # fmt: skip
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(path)
    return path
