"""Which process of a distributed launch this is: only the first one writes shared files or logs once-per-run notes."""

from __future__ import annotations

import os

# Set by torchrun, Lightning's DDP launcher (LOCAL_RANK/NODE_RANK in the processes it re-launches) and SLURM setups.
_RANK_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "RANK")


def is_launched_child() -> bool:
    """True in any process of a distributed launch but the first: a rank variable above 0, or a non-zero
    ``torch.distributed`` rank once a process group exists.

    Example:
        >>> import os
        >>> os.environ.pop("RANK", None) and None
        >>> is_launched_child()
        False
        >>> os.environ["RANK"] = "1"
        >>> is_launched_child()
        True
        >>> del os.environ["RANK"]
    """
    if any(int(os.environ.get(var, "0") or 0) > 0 for var in _RANK_VARIABLES):
        return True
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_rank() > 0
