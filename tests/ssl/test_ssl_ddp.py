"""DDP on CPU: ``strategy="ddp", accelerator="cpu", devices=2`` trains, shards the data and exports once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file
from ssl_helpers import digit_folder, tiny_cnn

HERE = Path(__file__).resolve().parent


def test_ddp_two_cpu_processes_complete_and_export(tmp_path: Path) -> None:
    data = digit_folder(tmp_path / "data", 32)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(HERE / "ssl_ddp_worker.py"), str(data), str(out), "byol"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1].splitlines()[0])
    assert result == {"world_size": 2, "steps": 4}  # 32 images / 2 ranks / batch 8 = 2 steps per epoch
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["images_seen"] == 2 * 2 * 8 * 2
    tiny_cnn().load_state_dict(load_file(out / "exported" / "backbone.safetensors"))
