"""is_launched_child: which process of a distributed launch skips the output-folder check and once-per-run logs."""

from __future__ import annotations


def test_a_process_group_rank_counts_as_a_launched_child(monkeypatch):
    # No rank variable set (a script that spawns its own processes): the process group's rank decides.
    import torch.distributed as dist

    from warmstart.core.processes import is_launched_child

    assert is_launched_child({"NODE_RANK": "1"}) and not is_launched_child({"RANK": "0", "LOCAL_RANK": " "})

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    for rank, child in ((1, True), (0, False)):
        monkeypatch.setattr(dist, "get_rank", lambda r=rank: r)
        assert is_launched_child({}) is child
