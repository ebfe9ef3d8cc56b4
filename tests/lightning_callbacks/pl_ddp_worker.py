"""One DDP rank for test_pl_ddp.py: gradual unfreezing under both modes; writes per-group weight hashes.

Launched twice by the test with LOCAL_RANK/WORLD_SIZE set, so Lightning joins the processes instead of spawning.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

from pl_helpers import GROUPS, DigitsCNN, L, loader, snapshot  # noqa: E402

from warmstart.lightning_callbacks import DiscriminativeLR, GradualUnfreezing  # noqa: E402


def run(mode: str, out: Path) -> None:
    from lightning.pytorch.strategies import DDPStrategy

    torch.manual_seed(0)
    model = DigitsCNN()
    before = snapshot(model)
    strategy = DDPStrategy(find_unused_parameters=mode == "requires_grad", process_group_backend="gloo")
    cbs = [GradualUnfreezing(head_epochs=1, mode=mode), DiscriminativeLR(layer_decay=0.5)]
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=2, limit_train_batches=3,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=cbs, num_sanity_val_steps=0)
    trainer.fit(model, loader(192))  # Lightning adds a DistributedSampler: each rank sees different batches
    params = dict(model.named_parameters())
    result = {"mode": cbs[0]._mode}
    for g in GROUPS:
        names = sorted(n for n in params if n.startswith(g + "."))
        digest = hashlib.sha256(b"".join(params[n].detach().numpy().tobytes() for n in names)).hexdigest()
        result[g] = {"hash": digest, "changed": any(not torch.equal(before[n], params[n]) for n in names)}
    (out / f"{mode}_rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    for mode in ("mask_grads", "requires_grad"):
        run(mode, Path(sys.argv[1]))
