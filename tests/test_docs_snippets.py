"""Every ```python block in README.md and docs/*.md runs as written (each file's blocks in order, one process).

A block preceded by an HTML comment ``<!-- not-run: reason -->`` is skipped, and the reason is printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!--\s*not-run:[^>]*-->\s*)?```python\n(.*?)```", re.S)


def python_blocks(path: Path) -> list[str]:
    """The runnable python blocks of a markdown file, in order."""
    return [code for skip, code in BLOCK.findall(path.read_text()) if not skip]


@pytest.mark.parametrize("doc", [p for p in DOC_FILES if p.exists()], ids=lambda p: p.name)
def test_snippets_run(doc: Path, tmp_path: Path) -> None:
    blocks = python_blocks(doc)
    if not blocks:
        pytest.skip(f"{doc.name} has no python blocks")
    script = tmp_path / "snippets.py"
    script.write_text("\n\n".join(blocks))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{doc.name} snippets failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
