"""Run by test_ssl_ddp.py in a subprocess: Lightning's DDP launcher re-executes this script for rank 1."""

from __future__ import annotations

import json
import sys

import torch
from ssl_helpers import tiny_cnn

from warmstart.pretraining import pretrain

if __name__ == "__main__":
    data, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    summary = pretrain(out, data, tiny_cnn(), method=sys.argv[3], epochs=2, batch_size=8, image_size=32,
                       strategy="ddp", accelerator="cpu", devices=2, progress=False)
    print("RESULT", json.dumps({"world_size": summary["world_size"], "steps": summary["steps"]}))
