"""Every registered domain ships a notebook; each is valid nbformat-4 JSON whose code cells are
valid Python (executing them needs a finished pipeline run: see the domains' notebooks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffsci.core.task import list_tasks

NOTEBOOKS = Path(__file__).resolve().parents[2] / "workflows" / "notebooks"


@pytest.mark.parametrize("domain", list_tasks())
def test_each_domain_has_a_notebook(domain):
    assert (NOTEBOOKS / f"{domain}.ipynb").is_file()


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_is_valid_and_its_code_compiles(path):
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4 and isinstance(nb["cells"], list) and nb["cells"]
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    for i, cell in enumerate(code):
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        # IPython magics and shell escapes are not Python
        src = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in src.splitlines())
        compile(src, f"{path.name}[code cell {i}]", "exec")
