"""The pretraining data pipeline: auto workers, the decoded-image cache, data-wait logging."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from ssl_helpers import digit_folder, one_thread, tiny_cnn  # noqa: F401 (one_thread: autouse fixture)

import warmstart.core.data as core_data
from warmstart.pretraining import pretrain
from warmstart.pretraining.ssl_data import resolve_num_workers

RUN = dict(batch_size=8, image_size=32, progress=False, accelerator="cpu", devices=1, num_workers=0,
           checkpoint_every=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return digit_folder(tmp_path_factory.mktemp("pipeline") / "data", 16)


def _count_decodes(monkeypatch) -> Counter:
    counts: Counter = Counter()
    original = core_data.load_rgb

    def counting(path):
        counts[Path(path).name] += 1
        return original(path)

    monkeypatch.setattr(core_data, "load_rgb", counting)  # what UnlabeledImages calls for every full decode
    return counts


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_cnn(8)


def test_auto_workers_follow_the_documented_rule(monkeypatch) -> None:
    assert resolve_num_workers("auto", 1, cpus=1) == 0  # one core: load in the training process
    assert resolve_num_workers("auto", 1, cpus=2) == 1
    assert resolve_num_workers("auto", 2, cpus=16) == 7  # per device, one core left for the trainer
    assert resolve_num_workers("auto", 1, cpus=96) == 8  # capped
    assert resolve_num_workers(5, 1, cpus=1) == 5  # an int is kept
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert resolve_num_workers("auto", 1) == 3
    with pytest.raises(ValueError, match="num_workers"):
        resolve_num_workers(-1)


@pytest.mark.parametrize("views", ["pil", "batched"])
def test_cache_decodes_once_and_trains_identically(data: Path, tmp_path: Path, monkeypatch, views: str) -> None:
    counts = _count_decodes(monkeypatch)
    cached = pretrain(tmp_path / "on", data, _cnn(), epochs=3, cache="ram", views=views, **RUN)
    assert cached["cache"]["mode"] == "ram" and cached["cache"]["bytes"] > 0
    assert len(counts) == 16 and set(counts.values()) == {1}, counts  # 3 epochs, one decode per file
    counts.clear()
    streamed = pretrain(tmp_path / "off", data, _cnn(), epochs=3, cache="off", views=views, **RUN)
    assert set(counts.values()) == {3}  # without the cache: every epoch decodes again
    a, b = (load_file(s["exported"]["safetensors"]) for s in (cached, streamed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical weights


def test_over_budget_streams_with_one_message(data: Path, tmp_path: Path, monkeypatch) -> None:
    # 16 digits at 32x32 RGB: 48 KB decoded; one batch of 8 is 24 KB; the budget sits in between.
    budget_gb = 30 * 1024 / 1024**3
    counts = _count_decodes(monkeypatch)
    with pytest.warns(UserWarning, match="over the cache budget") as caught:
        summary = pretrain(tmp_path / "run", data, _cnn(), epochs=2, cache="auto", cache_budget_gb=budget_gb, **RUN)
    assert sum("cache budget" in str(w.message) for w in caught) == 1
    assert summary["cache"]["mode"] == "off" and summary["cache"]["reason"] == "over budget"
    assert set(counts.values()) == {2}  # streamed: decoded every epoch
    with pytest.raises(ValueError, match="cache='ram'"):
        pretrain(tmp_path / "ram", data, _cnn(), epochs=1, cache="ram", cache_budget_gb=budget_gb, **RUN)


def test_budget_below_one_batch_is_refused_before_training(data: Path, tmp_path: Path, monkeypatch) -> None:
    counts = _count_decodes(monkeypatch)
    with pytest.raises(ValueError, match="less than one batch"):
        pretrain(tmp_path / "run", data, _cnn(), epochs=1, cache="auto", cache_budget_gb=1e-6, **RUN)
    assert not counts  # nothing decoded for training, nothing trained
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(ValueError, match="cache must be"):
        pretrain(tmp_path / "bad", data, _cnn(), epochs=1, cache="disk", **RUN)


def test_data_wait_fraction_in_summary_and_metrics(data: Path, tmp_path: Path) -> None:
    summary = pretrain(tmp_path / "run", data, _cnn(), epochs=2, **RUN)
    assert 0.0 <= summary["data_wait_fraction"] <= 1.0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["data_wait_fraction"] == \
        summary["data_wait_fraction"]
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("data_wait_fraction")]
    assert len(rows) == 2  # one per epoch
    assert all(0.0 <= float(r["data_wait_fraction"]) <= 1.0 and float(r["images_per_s"]) > 0 for r in rows)


def test_wide_images_keep_their_crop_frame_through_the_cache(tmp_path: Path, monkeypatch) -> None:
    # 48 x 32 photos: the cache keeps each image's 3:2 crop frame next to its squeezed pixels, so a cached run
    # crops exactly as a streamed one (a cache that dropped the frames would crop the square and train otherwise).
    import numpy as np
    from PIL import Image

    from warmstart.pretraining.batched_views import BatchedViews, LoadResized
    from warmstart.pretraining.image_cache import CachedImages

    frames: list = []
    make_views = BatchedViews.__call__

    def recording(self, images, indices, epoch, shapes=None):
        frames.append(None if shapes is None else shapes.tolist())
        return make_views(self, images, indices, epoch, shapes=shapes)

    monkeypatch.setattr(BatchedViews, "__call__", recording)

    folder = tmp_path / "wide"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        pixels = np.repeat(np.repeat(rng.integers(0, 256, (4, 6, 3)), 8, 0), 8, 1).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    cached_items = CachedImages(core_data.UnlabeledImages(folder, progress=False), LoadResized(32), progress=False)
    assert cached_items[0].shape.tolist() == [32, 48] and tuple(cached_items[0].image.shape) == (3, 32, 32)
    runs = {}
    for cache in ("ram", "off"):
        summary = pretrain(tmp_path / cache, folder, _cnn(), epochs=2, cache=cache, views="batched", **RUN)
        assert summary["cache"]["mode"] == cache
        assert len(frames) == 4 and all(f == [[32, 48]] * 8 for f in frames), frames  # 2 epochs x 2 batches of 8
        frames.clear()
        runs[cache] = load_file(summary["exported"]["safetensors"])
    assert all(torch.equal(runs["ram"][k], runs["off"][k]) for k in runs["ram"])


def test_cached_crop_frames_reach_spawned_workers_under_a_small_file_limit() -> None:
    # With the "spawn" start method (macOS/Windows default) the cache is pickled to each worker, and every torch
    # tensor in it travels as its own shared-memory segment (2 file descriptors each): frames kept as one tensor per
    # image exhausted a 256-descriptor limit at 600 images. Kept as one array, they reach the worker intact.
    import resource

    from PIL import Image
    from torch.utils.data import DataLoader

    from warmstart.pretraining.batched_views import LoadResized
    from warmstart.pretraining.image_cache import CachedImages
    from warmstart.pretraining.ssl_data import IndexedImages

    photos = [Image.new("RGB", (12, 8), (i % 256, 0, 0)) for i in range(600)]
    cached = CachedImages(photos, LoadResized(8), progress=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        loader = DataLoader(IndexedImages(cached), batch_size=8, num_workers=1, multiprocessing_context="spawn")
        images, indices, frames = next(iter(loader))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert tuple(images.shape) == (8, 3, 8, 8) and indices.tolist() == list(range(8))
    assert frames.tolist() == [[8, 12]] * 8
