"""Render every ``benchmarks/results/<stem>.json`` table into README.md and benchmarks/RESULTS.md.

The text between ``<!-- results:<stem> -->`` and ``<!-- /results:<stem> -->`` is replaced by the markdown
rendering of that JSON's "table" (title, columns, rows) plus the command and machine load it was measured with.
A marker without a JSON is an error; a JSON without a marker is listed but allowed (a benchmark can be recorded
before a document quotes it).

    python benchmarks/render_results.py           # rewrite the marked regions
    python benchmarks/render_results.py --check   # exit 1 if a region is out of date, a marker has no JSON, or a
                                                  # JSON's table is not what its script's summarize(runs) gives
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
DOCUMENTS = (ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md")
REQUIRED = ("benchmark", "command", "started", "machine", "config", "runs", "table")
MARKER = re.compile(r"<!-- results:(?P<stem>[\w.-]+) -->\n(?P<body>.*?)<!-- /results:(?P=stem) -->", re.S)
OPEN_MARKER = re.compile(r"<!-- results:(?P<stem>[\w.-]+) -->")


def load_results(results_dir: Path = RESULTS_DIR) -> dict[str, dict]:
    """Every results JSON by stem, checked for the shared keys and table shape (``ValueError`` names the file).

    Example:
        >>> import tempfile
        >>> load_results(Path(tempfile.mkdtemp()))
        {}
    """
    out = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        missing = [k for k in REQUIRED if k not in payload]
        if missing:
            raise ValueError(f"{path}: missing keys {missing}; a results JSON needs {list(REQUIRED)}")
        table = payload["table"]
        if not isinstance(table, dict) or not {"title", "columns", "rows"} <= set(table):
            raise ValueError(f"{path}: 'table' must be {{'title': str, 'columns': [str], 'rows': [[str]]}}")
        bad = [i for i, row in enumerate(table["rows"]) if len(row) != len(table["columns"])]
        if bad:
            raise ValueError(f"{path}: table rows {bad} do not have {len(table['columns'])} cells")
        out[path.stem] = payload
    return out


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render(payload: dict) -> str:
    """Markdown for one results JSON: bold title, the table, then how it was measured.

    Example:
        >>> p = {"command": "python benchmarks/x.py", "started": "2026-01-01T10:00:00+0000",
        ...      "machine": {"cpus": 2, "torch": "2.5", "loadavg_start": [1.0, 1, 1], "loadavg_end": [2.0, 1, 1]},
        ...      "table": {"title": "T", "columns": ["a", "b"], "rows": [["1", "2"]]}}
        >>> print(render(p))
        **T**
        <BLANKLINE>
        | a | b |
        |---|---|
        | 1 | 2 |
        <BLANKLINE>
        Measured by `python benchmarks/x.py` at 2026-01-01T10:00:00+0000;
        2 CPUs, torch 2.5, load average (1 min) 1.0 at start, 2.0 at end.
    """
    table, machine = payload["table"], payload.get("machine", {})
    lines = [f"**{table['title']}**", "", "| " + " | ".join(_cell(c) for c in table["columns"]) + " |",
             "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table["rows"]]
    load = [machine.get("loadavg_start", [None])[0], machine.get("loadavg_end", [None])[0]]
    kernels = f", {machine['cpu_capability']} kernels" if machine.get("cpu_capability") else ""
    cpu = f" ({machine['cpu']}{kernels})" if machine.get("cpu") else ""
    lines += ["", f"Measured by `{payload['command']}` at {payload['started']};",
              f"{machine.get('cpus')} CPUs{cpu}, torch {machine.get('torch')}, load average (1 min) {load[0]} at "
              f"start, {load[1]} at end."]
    return "\n".join(lines)


def update_text(text: str, results: dict[str, dict]) -> tuple[str, list[str]]:
    """``text`` with every marked region re-rendered; also the stems whose marker has no JSON (left as they are).

    Example:
        >>> update_text("<!-- results:nope -->\\nold\\n<!-- /results:nope -->\\n", {})
        ('<!-- results:nope -->\\nold\\n<!-- /results:nope -->\\n', ['nope'])
    """
    missing: list[str] = []

    def repl(match: re.Match) -> str:
        stem = match["stem"]
        if stem not in results:
            missing.append(stem)
            return match[0]
        return f"<!-- results:{stem} -->\n{render(results[stem])}\n<!-- /results:{stem} -->"

    opened = [m["stem"] for m in OPEN_MARKER.finditer(text)]
    closed = [m["stem"] for m in MARKER.finditer(text)]
    unclosed = sorted(set(opened) - set(closed))
    if unclosed:
        raise ValueError(f"markers <!-- results:{unclosed[0]} --> without a matching <!-- /results:{unclosed[0]} -->")
    return MARKER.sub(repl, text), missing


def load_script(stem: str, scripts_dir: Path):
    """Import ``<scripts_dir>/<stem>.py`` as a module (its ``summarize`` recomputes the table).

    Example:
        >>> load_script("render_results", Path(__file__).parent).MARKER.pattern[:4]
        '<!--'
    """
    path = Path(scripts_dir) / f"{stem}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no script for results/{stem}.json")
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # the scripts import their helpers (results_io) as top-level modules
    spec = importlib.util.spec_from_file_location(f"benchmark_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_stem(stem: str, payload: dict) -> str:
    """The script that wrote ``results/<stem>.json``: the ``benchmarks/<script>.py`` of its recorded command (one
    script may write several results files, e.g. two sizes via ``--name``), else ``stem``.

    Example:
        >>> script_stem("a_512", {"command": "python benchmarks/a.py --name a_512"}), script_stem("b", {})
        ('a', 'b')
    """
    match = re.search(r"(?:^|[\s/])benchmarks/([\w-]+)\.py\b", str(payload.get("command", "")))
    return match.group(1) if match else stem


def table_mismatches(results: dict[str, dict], scripts_dir: Path) -> list[str]:
    """Problems where a JSON's table is not its script's ``summarize(runs, config)`` (so it was hand-edited, or
    the script changed after the run).

    Example:
        >>> table_mismatches({}, Path("."))
        []
    """
    problems = []
    for stem, payload in results.items():
        script = script_stem(stem, payload)
        try:
            module = load_script(script, scripts_dir)
        except FileNotFoundError as err:
            problems.append(str(err))
            continue
        if not hasattr(module, "summarize"):
            problems.append(f"{script}.py has no summarize(runs, config)")
            continue
        try:
            recomputed = json.loads(json.dumps(module.summarize(payload["runs"], payload["config"])))
        except Exception as err:  # a script changed after its run: report it with the others, don't stop
            problems.append(f"results/{stem}.json: {script}.summarize(runs, config) raised {type(err).__name__}: "
                            f"{err}; rerun the benchmark")
            continue
        if recomputed != payload["table"]:
            problems.append(f"results/{stem}.json: its table differs from {script}.summarize(runs, config)")
    return problems


def main(argv: list[str] | None = None, documents: tuple[Path, ...] = DOCUMENTS,
         results_dir: Path = RESULTS_DIR) -> int:
    """Rewrite (or with ``--check`` verify) the marked regions; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is out of date")
    args = parser.parse_args(argv)
    try:
        results = load_results(results_dir)
    except ValueError as err:
        print(f"render_results: {err}", file=sys.stderr)
        return 1
    problems, placed = [], set()
    for doc in documents:
        text = doc.read_text()
        new, missing = update_text(text, results)
        placed |= {m["stem"] for m in MARKER.finditer(text)}
        problems += [f"{doc.name}: marker results:{s} has no results/{s}.json" for s in missing]
        if new != text:
            if args.check:
                problems.append(f"{doc.name}: out of date; run python benchmarks/render_results.py")
            else:
                doc.write_text(new)
                print(f"updated {doc}")
    if args.check:
        problems += table_mismatches(results, Path(results_dir).parent)
    for stem in sorted(set(results) - placed):
        print(f"note: results/{stem}.json is not quoted by any document")
    for problem in problems:
        print(f"render_results: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
