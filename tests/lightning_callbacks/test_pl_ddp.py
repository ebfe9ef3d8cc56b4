"""DDP on 2 CPU processes: gradual unfreezing trains the unfrozen groups on both ranks, and they stay in sync.

The known pitfall: toggling ``requires_grad`` after DDP wrapped the model either crashes DDP or silently stops
the gradient all-reduce. We check both modes (``mask_grads`` with plain DDP, ``requires_grad`` with
``find_unused_parameters=True``): groups the schedule unfroze changed, groups it kept frozen did not, and every
group's weights hash the same on both ranks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")
if not __import__("torch").distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

WORKER = Path(__file__).with_name("pl_ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gradual_unfreezing_under_ddp_two_cpu_processes(tmp_path):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "NODE_RANK": "0", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(tmp_path)], env={**env, "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    for mode in ("mask_grads", "requires_grad"):
        r0, r1 = (json.loads((tmp_path / f"{mode}_rank{r}.json").read_text()) for r in range(2))
        assert r0["mode"] == r1["mode"] == mode
        # epoch 0: head only; epoch 1: block2 + head (head_epochs=1); stem and block1 never unfrozen
        assert [g for g in ("stem", "block1", "block2", "head") if r0[g]["changed"]] == ["block2", "head"]
        assert [g for g in ("stem", "block1", "block2", "head") if r1[g]["changed"]] == ["block2", "head"]
        for g in ("stem", "block1", "block2", "head"):
            assert r0[g]["hash"] == r1[g]["hash"], f"{mode}: {g} differs across ranks (gradients not synced)"
