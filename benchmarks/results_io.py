"""Write one benchmark's ``benchmarks/results/<stem>.json`` in the shared format (see benchmarks/RESULTS.md).

Keys: "benchmark", "command", "started", "machine" ({"cpus", "torch", "cpu", "cpu_capability", "loadavg_start",
"loadavg_end"}; "cpu" and "cpu_capability" since 2026-12-01), "config", "runs" (raw per-run values) and "table"
(computed from "runs" by the script's ``summarize(runs, config)``).
``benchmarks/render_results.py`` renders the tables into README.md and RESULTS.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class Recorder:
    """Captures the machine state when a benchmark starts; ``write`` adds runs and the table at the end.

    Example:
        >>> import tempfile
        >>> rec = Recorder("demo_bench", {"n": 1}, results_dir=Path(tempfile.mkdtemp()))
        >>> path = rec.write([{"x": 1.0}], lambda runs, config: {  # doctest: +ELLIPSIS
        ...     "title": "t", "columns": ["x"], "rows": [[str(r["x"])] for r in runs]})
        wrote ...demo_bench.json
        >>> json.loads(path.read_text())["table"]["rows"]
        [['1.0']]
    """

    def __init__(self, stem: str, config: dict, results_dir: Path = RESULTS_DIR) -> None:
        self.stem, self.config, self.results_dir = stem, config, results_dir
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.loadavg_start = [round(v, 2) for v in os.getloadavg()]
        self.command = " ".join(shlex.quote(a) for a in ["python", *_script_args()])

    def write(self, runs: list[dict], summarize: Callable[[list[dict], dict], dict]) -> Path:
        """Write the JSON (atomically) and return its path; the table comes from ``summarize(runs, config)``."""
        import torch

        payload = {"benchmark": self.stem, "command": self.command, "started": self.started,
                   "machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                               # float results differ across CPU kernels (AVX2 vs AVX-512), so a seed's
                               # accuracy reproduces only on the same kind of CPU
                               "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                               "loadavg_start": self.loadavg_start,
                               "loadavg_end": [round(v, 2) for v in os.getloadavg()]},
                   "config": self.config, "runs": runs, "table": summarize(runs, self.config)}
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = write_json(self.results_dir / f"{self.stem}.json", payload)
        print(f"wrote {path}")
        return path


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``; ``None`` if unknown.

    Example:
        >>> isinstance(cpu_model(), (str, type(None)))
        True
    """
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def write_json(path: Path, value: Any) -> Path:
    """Write ``value`` as indented JSON to ``path`` atomically (temporary file + rename): a kill mid-write keeps
    the previous file, so partial results written as a benchmark goes survive it.

    Example:
        >>> import tempfile
        >>> path = write_json(Path(tempfile.mkdtemp()) / "a.json", {"x": 1})
        >>> json.loads(path.read_text())
        {'x': 1}
    """
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _script_args() -> list[str]:
    """The command line as typed from the repository root: ``benchmarks/<script>.py`` plus its arguments."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):  # run from outside the repository: keep the absolute path
        script = script.relative_to(Path(__file__).resolve().parents[1])
    return [str(script), *sys.argv[1:]]


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """``median (min..max, n=N)`` of all values, formatted with ``fmt``.

    Example:
        >>> spread([1.0, 3.0, 2.0])
        '2.000 (1.000..3.000, n=3)'
    """
    import statistics

    if not values:
        return "n/a"
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{fmt.format(med)} ({fmt.format(lo)}..{fmt.format(hi)}, n={len(values)})"
