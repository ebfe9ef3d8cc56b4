"""Every ```python block in README.md and docs/*.md runs as written, and prints what the docs say it prints.

Convention (one rule for every doc):

* Each file's python blocks run in order in one process (later blocks reuse earlier names), in a fresh folder.
* A python block followed immediately (only whitespace between) by an ```output block must print exactly that
  block's lines to stdout, compared line by line after stripping trailing whitespace; an output line that is
  exactly ``...`` matches any number of lines (none included). Leading and trailing blank lines are ignored.
* A python block that prints anything but has no output block fails: no snippet prints an unchecked claim.
  An output block must hold at least one line besides ``...``.
* A block preceded by an HTML comment ``<!-- not-run: reason -->`` is skipped (so is its output block).

Each block's stdout is told apart by a sentinel line the generated script prints before every block.

To see what each block of a doc prints now (e.g. to write its output block)::

    .venv/bin/python tests/test_docs_snippets.py docs/lightning.md
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"<!--\s*not-run:([^>]*)-->\s*\Z")
SENTINEL = "@@warmstart-docs-block-{}@@"
ANY = "..."


@dataclass
class Snippet:
    """One runnable python block: its code, its expected output lines (None: none given) and where it starts."""

    code: str
    expected: list[str] | None
    line: int


def snippets(text: str) -> list[Snippet]:
    """The runnable python blocks of a markdown text, in order, each with the output block that follows it.

    Example:
        >>> doc = "```python\\nprint(1)\\n```\\n\\n```output\\n1\\n```\\n<!-- not-run: x -->\\n```python\\nx\\n```\\n"
        >>> [(s.code, s.expected) for s in snippets(doc)]
        [('print(1)\\n', ['1'])]
    """
    fences = list(FENCE.finditer(text))
    out: list[Snippet] = []
    for i, fence in enumerate(fences):
        if fence.group(1) != "python":
            continue
        before = text[fences[i - 1].end() if i else 0:fence.start()]
        if NOT_RUN.search(before):
            continue
        nxt = fences[i + 1] if i + 1 < len(fences) else None
        expected = None
        if nxt is not None and nxt.group(1) == "output" and not text[fence.end():nxt.start()].strip():
            expected = nxt.group(2).splitlines()
        out.append(Snippet(fence.group(2), expected, text.count("\n", 0, fence.start()) + 1))
    return out


def orphan_outputs(text: str) -> list[int]:
    """Lines of the ```output blocks that follow no python block directly (they would check nothing).

    Example:
        >>> orphan_outputs("```python\\nprint(1)\\n```\\n```output\\n1\\n```\\ntext\\n```output\\n2\\n```\\n")
        [8]
    """
    fences = list(FENCE.finditer(text))
    return [text.count("\n", 0, f.start()) + 1 for i, f in enumerate(fences) if f.group(1) == "output"
            and (i == 0 or fences[i - 1].group(1) != "python" or text[fences[i - 1].end():f.start()].strip())]


def _trim(lines: list[str]) -> list[str]:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """True when ``actual`` lines match ``expected`` (trailing whitespace ignored, a ``...`` line = any lines).

    Example:
        >>> output_matches(["a", "...", "c"], ["a", "b", "b", "c  "])
        True
        >>> output_matches(["0.5"], ["0.25"])
        False
    """
    exp, act = _trim(expected), _trim(actual)
    # ok[i][j]: exp[i:] matches act[j:]; filled backwards (a glob match over lines).
    ok = [[False] * (len(act) + 1) for _ in range(len(exp) + 1)]
    ok[len(exp)][len(act)] = True
    for i in range(len(exp) - 1, -1, -1):
        for j in range(len(act), -1, -1):
            if exp[i] == ANY:
                ok[i][j] = ok[i + 1][j] or (j < len(act) and ok[i][j + 1])
            else:
                ok[i][j] = j < len(act) and exp[i] == act[j] and ok[i + 1][j + 1]
    return ok[0][0]


def run_snippets(blocks: list[Snippet], cwd: Path) -> tuple[int, list[str], str, int]:
    """Run ``blocks`` in order in one fresh Python process in ``cwd``.

    Returns the exit code, each block's stdout (blocks after a failure get nothing), the stderr and the index of
    the last block that started.
    """
    # The newline first: a block whose output ends without one still gets its sentinel on a line of its own.
    parts = [f"print({chr(10) + SENTINEL.format(k)!r}, flush=True)\n{b.code}" for k, b in enumerate(blocks)]
    script = cwd / "snippets.py"
    script.write_text("\n\n".join(parts))
    # As in tests/conftest.py: offline, quiet Ultralytics (docs put `...` where a framework's own log may appear).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "YOLO_OFFLINE": "1",
           "YOLO_VERBOSE": "False", "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
    outputs = [""] * len(blocks)
    current = -1
    marker_line = re.compile(re.escape(SENTINEL.split("{}")[0]) + r"(\d+)" + re.escape(SENTINEL.split("{}")[1]) + "\n?")
    for line in proc.stdout.splitlines(keepends=True):
        marker = marker_line.fullmatch(line)
        if marker:
            current = int(marker.group(1))
        elif current >= 0:
            outputs[current] += line
    return proc.returncode, outputs, proc.stderr, current


def problems(doc_name: str, blocks: list[Snippet], outputs: list[str]) -> list[str]:
    """Every block whose stdout breaks the convention, with what it printed."""
    found = []
    for block, printed in zip(blocks, outputs):
        where = f"{doc_name} line {block.line}"
        if block.expected is None:
            if _trim(printed.splitlines()):
                found.append(f"{where}: prints but has no ```output block; it printed:\n{printed}")
        elif not [line for line in _trim(block.expected) if line != ANY]:
            found.append(f"{where}: its ```output block is only `...`: it checks nothing; it printed:\n{printed}")
        elif not output_matches(block.expected, printed.splitlines()):
            found.append(f"{where}: output differs.\n--- expected\n" + "\n".join(block.expected)
                         + f"\n--- printed\n{printed}")
    return found


@pytest.mark.parametrize("doc", [p for p in DOC_FILES if p.exists()], ids=lambda p: p.name)
def test_snippets_print_what_the_docs_say(doc: Path, tmp_path: Path) -> None:
    assert not orphan_outputs(doc.read_text()), f"{doc.name}: ```output blocks that follow no python block"
    blocks = snippets(doc.read_text())
    if not blocks:
        pytest.skip(f"{doc.name} has no python blocks")
    code, outputs, stderr, last = run_snippets(blocks, tmp_path)
    if code != 0:
        pytest.fail(f"{doc.name}: the block at line {blocks[max(last, 0)].line} failed (exit {code}); it printed:\n"
                    f"{outputs[max(last, 0)][-2000:]}\n--- stderr\n{stderr[-6000:]}")
    found = problems(doc.name, blocks, outputs)
    assert not found, "\n\n".join(found)


def test_output_matcher() -> None:
    """The matcher itself can fail: wrong numbers, missing or extra lines; ``...`` spans any number of lines."""
    assert output_matches(["[1.0, 0.5]"], ["[1.0, 0.5]   "])
    assert not output_matches(["[1.0, 0.5]"], ["[1.0, 0.25]"])
    assert not output_matches(["a", "b"], ["a"])
    assert not output_matches(["a"], ["a", "b"])
    assert output_matches(["...", "b"], ["x", "y", "b"])
    assert output_matches(["a", "...", "b"], ["a", "b"])  # ... may match nothing
    assert not output_matches(["a", "...", "b"], ["a", "x", "c"])
    assert output_matches(["", "a", ""], ["a"])  # blank edges ignored
    only_any = Snippet("print(1)", ["..."], 1)
    assert "checks nothing" in problems("doc.md", [only_any], ["1\n"])[0]  # `...` alone asserts nothing


def test_blocks_without_output_fail_when_they_print(tmp_path: Path) -> None:
    """A printing block with no output block, or a wrong printed number, is reported; a silent block is fine."""
    doc = ("```python\nx = 2\n```\n\n```python\nprint(x * 2)\n```\n\n```output\n5\n```\n"
           "```python\nprint('unchecked', end='')\n```\n<!-- not-run: demo -->\n```python\nraise SystemExit(1)\n```\n"
           "```python\nprint(x)\n```\n```output\n2\n```\n")
    blocks = snippets(doc)
    assert [b.expected for b in blocks] == [None, ["5"], None, ["2"]]
    code, outputs, _, last = run_snippets(blocks, tmp_path)
    assert code == 0 and last == 3 and [o.strip() for o in outputs] == ["", "4", "unchecked", "2"]
    found = problems("doc.md", blocks, outputs)
    assert len(found) == 2 and "output differs" in found[0] and "no ```output block" in found[1]


if __name__ == "__main__":  # print what each block of the given docs prints now
    for name in sys.argv[1:]:
        path = Path(name).resolve()
        blocks = snippets(path.read_text())
        with tempfile.TemporaryDirectory() as tmp:
            code, outputs, stderr, _ = run_snippets(blocks, Path(tmp))
        for block, printed in zip(blocks, outputs):
            print(f"===== {path.name} line {block.line} (expected given: {block.expected is not None})")
            print(printed, end="")
        print(f"===== exit {code}")
        if code:
            print(stderr[-4000:])
