"""Every Python block of the README and of docs/ runs: each page's blocks, in order, as one script in a fresh
directory (a page reads like a notebook: later blocks use what earlier ones made), so an example cannot rot."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT, cli_env

pytestmark = pytest.mark.slow

PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")), "CONTRIBUTING.md"]


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.S)


def test_the_pages_hold_python_examples():
    assert python_blocks("README.md") and len(python_blocks("docs/research.md")) >= 8


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)])
def test_every_python_block_runs(page, tmp_path):
    script = "\n\n".join(f"# --- {page}, block {i + 1}\n{b}" for i, b in enumerate(python_blocks(page)))
    (tmp_path / "page.py").write_text(script)
    p = subprocess.run([sys.executable, "page.py"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, f"{page}:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
