"""README/RESULTS benchmark tables come from data: benchmarks/results/*.json, rendered by render_results.py.

(a) every marked region equals the rendering of its JSON, and every marker has a JSON;
(b) every JSON's table is what its script's ``summarize(runs, config)`` computes from the raw runs (so a number
    cannot be edited by hand, in the document or in the JSON);
(c) the checker itself fails on a stale region, a marker without a JSON and a hand-edited table (tmp copies).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import render_results  # noqa: E402

RESULTS = render_results.load_results()


@pytest.mark.parametrize("doc", render_results.DOCUMENTS, ids=lambda p: p.name)
def test_document_regions_equal_rendered_json(doc: Path):
    text = doc.read_text()
    updated, missing = render_results.update_text(text, RESULTS)
    assert not missing, f"{doc.name}: markers without a results JSON: {missing}"
    assert updated == text, f"{doc.name} is out of date: run python benchmarks/render_results.py"


def test_readme_quotes_benchmark_tables():
    stems = {m["stem"] for m in render_results.MARKER.finditer((ROOT / "README.md").read_text())}
    assert {"callback_overhead", "hf_lora", "yolo_transfer"} <= stems


@pytest.mark.parametrize("stem", sorted(RESULTS))
def test_json_table_is_recomputed_from_runs(stem: str):
    assert RESULTS[stem]["benchmark"] == stem
    assert RESULTS[stem]["runs"], f"results/{stem}.json keeps no runs"
    assert render_results.table_mismatches({stem: RESULTS[stem]}, ROOT / "benchmarks") == []


FAKE_SCRIPT = '''
def summarize(runs, config):
    values = sorted(r["x"] for r in runs)
    return {"title": "fake " + config["name"], "columns": ["median"], "rows": [[f"{values[len(values) // 2]:.2f}"]]}
'''


def _fake_bench(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A benchmarks folder with one script, its JSON (table from summarize) and a document quoting it."""
    bench = tmp_path / "benchmarks"
    (bench / "results").mkdir(parents=True)
    (bench / "fake.py").write_text(FAKE_SCRIPT)
    runs, config = [{"x": 1.0}, {"x": 3.0}, {"x": 2.0}], {"name": "bench"}
    payload = {"benchmark": "fake", "command": "python benchmarks/fake.py", "started": "2026-01-01T00:00:00+0000",
               "machine": {"cpus": 2, "torch": "x", "loadavg_start": [1.0], "loadavg_end": [1.0]},
               "config": config, "runs": runs,
               "table": {"title": "fake bench", "columns": ["median"], "rows": [["2.00"]]}}
    result = bench / "results" / "fake.json"
    result.write_text(json.dumps(payload))
    doc = tmp_path / "README.md"
    doc.write_text("# t\n\n<!-- results:fake -->\nhand-written 9.99\n<!-- /results:fake -->\n\nafter\n")
    return bench, result, doc


def test_checker_fails_on_stale_region_then_render_fixes_it(tmp_path, capsys):
    bench, _, doc = _fake_bench(tmp_path)
    check = ["--check"]
    assert render_results.main(check, documents=(doc,), results_dir=bench / "results") == 1
    assert "out of date" in capsys.readouterr().err
    assert render_results.main([], documents=(doc,), results_dir=bench / "results") == 0
    text = doc.read_text()
    assert "9.99" not in text and "| 2.00 |" in text and text.endswith("after\n")
    assert render_results.main(check, documents=(doc,), results_dir=bench / "results") == 0


def test_checker_fails_on_marker_without_json(tmp_path, capsys):
    bench, _, doc = _fake_bench(tmp_path)
    render_results.main([], documents=(doc,), results_dir=bench / "results")
    doc.write_text(doc.read_text() + "<!-- results:gone -->\nold\n<!-- /results:gone -->\n")
    assert render_results.main(["--check"], documents=(doc,), results_dir=bench / "results") == 1
    assert "marker results:gone has no results/gone.json" in capsys.readouterr().err


def test_checker_fails_on_hand_edited_table_or_missing_script(tmp_path, capsys):
    bench, result, doc = _fake_bench(tmp_path)
    render_results.main([], documents=(doc,), results_dir=bench / "results")
    payload = json.loads(result.read_text())
    payload["table"]["rows"] = [["2.50"]]  # a "better" number than the runs give
    result.write_text(json.dumps(payload))
    render_results.main([], documents=(doc,), results_dir=bench / "results")  # region now agrees with the JSON
    assert render_results.main(["--check"], documents=(doc,), results_dir=bench / "results") == 1
    assert "differs from fake.summarize" in capsys.readouterr().err
    (bench / "fake.py").unlink()
    problems = render_results.table_mismatches(render_results.load_results(bench / "results"), bench)
    assert problems and "no script" in problems[0]


def test_malformed_json_is_named(tmp_path):
    bench, result, _ = _fake_bench(tmp_path)
    payload = json.loads(result.read_text())
    del payload["runs"]
    result.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"fake.json: missing keys \['runs'\]"):
        render_results.load_results(bench / "results")


def test_second_results_file_of_one_script_is_checked_against_that_script(tmp_path, capsys):
    """``--name`` writes e.g. results/fake_small.json: its table is recomputed by fake.py (from its command)."""
    bench, result, doc = _fake_bench(tmp_path)
    payload = json.loads(result.read_text())
    payload.update(benchmark="fake_small", command="python benchmarks/fake.py --name fake_small")
    second = bench / "results" / "fake_small.json"
    second.write_text(json.dumps(payload))
    assert render_results.table_mismatches(render_results.load_results(bench / "results"), bench) == []
    payload["table"]["rows"] = [["2.50"]]
    second.write_text(json.dumps(payload))
    problems = render_results.table_mismatches(render_results.load_results(bench / "results"), bench)
    assert problems == ["results/fake_small.json: its table differs from fake.summarize(runs, config)"]
