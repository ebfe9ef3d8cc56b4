"""Which process of a distributed launch this is: only the first one checks or cleans shared output folders and logs
once-per-run notes."""

from __future__ import annotations

import os
from collections.abc import Mapping

# Set by torchrun and by Lightning's DDP launcher in the processes it re-launches (LOCAL_RANK/NODE_RANK). Not by
# srun alone: SLURM's own SLURM_PROCID is not read, since independent tasks of one job would all look like children.
_RANK_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "RANK")


def is_launched_child(environ: Mapping[str, str] | None = None) -> bool:
    """True in a process that torchrun or Lightning's launcher started besides the first (a rank variable above 0),
    or whose ``torch.distributed`` process group rank is above 0. Unparsable values count as 0.

    Example:
        >>> is_launched_child({}), is_launched_child({"RANK": "1"}), is_launched_child({"LOCAL_RANK": "x"})
        (False, True, False)
    """
    env = os.environ if environ is None else environ
    if any(env.get(var, "").strip().isdigit() and int(env[var]) > 0 for var in _RANK_VARIABLES):
        return True
    import torch.distributed as dist  # already loaded with torch: no import cost

    return dist.is_available() and dist.is_initialized() and dist.get_rank() > 0
