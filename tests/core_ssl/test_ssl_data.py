"""Image folders: every format and colour mode decodes to RGB; broken files are skipped, counted, warned once."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from ssl_core_helpers import make_mixed_folder, rgb
from torch.utils.data import DataLoader

from warmstart.core.data import (
    IMAGE_SUFFIXES,
    LabeledImageFolder,
    UnlabeledImages,
    check_image,
    find_images,
    write_image_folder,
)


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.resize((16, 16)), dtype=np.float32)).permute(2, 0, 1)


def test_mixed_folder_skips_broken_files_with_one_warning(tmp_path):
    good, bad = make_mixed_folder(tmp_path / "imgs")
    assert find_images(tmp_path / "imgs") == sorted(good + bad, key=str)  # recursive, sorted, README ignored
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = UnlabeledImages(tmp_path / "imgs", transform=to_tensor, progress=False)
    ours = [w for w in caught if "cannot be decoded" in str(w.message)]
    assert len(ours) == 1 and "skipped 3 of 13" in str(ours[0].message)
    assert ds.skipped == 3 and ds.files == good and len(ds) == len(good)
    assert {p for p, _ in ds.skipped_files} == set(bad)
    assert dict((p.name, why) for p, why in ds.skipped_files) == {
        "zero.png": "empty file", "truncated.jpg": "truncated", "notes.jpg": "not an image"}
    batches = list(DataLoader(ds, batch_size=4))  # a full epoch, no crash
    assert sum(len(b) for b in batches) == len(good) and batches[0].shape[1:] == (3, 16, 16)


def test_every_colour_mode_becomes_rgb(tmp_path):
    good, _ = make_mixed_folder(tmp_path / "imgs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = UnlabeledImages(good, progress=False)
    modes = {p.name: Image.open(p).mode for p in good}
    assert {"L", "RGBA", "P"} <= set(modes.values())
    for i in range(len(ds)):
        assert ds[i].mode == "RGB" and ds[i].size == (24, 24)
    rgba = ds[ds.files.index(tmp_path / "imgs" / "d_rgba.png")]
    assert np.asarray(rgba).max() > 0  # composited, not blacked out


def test_file_broken_after_scan_is_replaced_and_counted(tmp_path):
    root = write_image_folder(np.stack([rgb(i, 8) for i in range(3)]), None, tmp_path / "imgs")
    ds = UnlabeledImages(root, progress=False)
    assert ds.skipped == 0
    ds.files[1].write_bytes(b"garbage now")
    with pytest.warns(UserWarning, match="skipping unreadable image") as caught:
        images = [ds[i] for i in range(len(ds))]
        images += [ds[1]]  # second failure of the same file: no second warning
    assert len(caught) == 1 and ds.skipped == 1
    assert np.array_equal(np.asarray(images[1]), np.asarray(images[2]))  # served the next readable image


def test_worker_processes_load_the_dataset(tmp_path):
    root = write_image_folder(np.stack([rgb(i, 8) for i in range(6)]), None, tmp_path / "imgs")
    ds = UnlabeledImages(root, transform=to_tensor, progress=False)
    loader = DataLoader(ds, batch_size=3, num_workers=2)
    assert sum(len(b) for b in loader) == 6


def test_missing_or_empty_folders_fail_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        UnlabeledImages(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        UnlabeledImages(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="found 1 other files"):
        find_images(tmp_path / "text")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="none of the 1 image files could be read"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        UnlabeledImages(tmp_path / "broken")
    with pytest.raises(ValueError, match="empty"):
        UnlabeledImages([])


def test_suffixes_case_insensitive_and_hidden_files_skipped(tmp_path):
    # Derived from what PIL reads (see warmstart.core.image_scan); the common photo formats must be in it.
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"} <= set(IMAGE_SUFFIXES)
    assert all(s.startswith(".") and s == s.lower() for s in IMAGE_SUFFIXES)
    for name in ("B.PNG", "a.Jpeg", ".hidden.png", "c.TIFF", "d.GIF"):
        Image.fromarray(rgb(0, 4)).save(tmp_path / name)  # PIL picks the format from the suffix, any case
    (tmp_path / ".git").mkdir()
    Image.fromarray(rgb(0, 4)).save(tmp_path / ".git" / "x.png")
    assert [p.name for p in find_images(tmp_path)] == ["B.PNG", "a.Jpeg", "c.TIFF", "d.GIF"]
    assert check_image(tmp_path / "B.PNG") is None and check_image(tmp_path / "nope.png") == "missing"


def test_dataset_and_tensor_sources():
    class Tensors(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.rand(3, 10, 12), i  # (image, label) like torchvision datasets

    ds = UnlabeledImages(Tensors(), transform=to_tensor)
    assert len(ds) == 2 and ds.files is None and ds.skipped == 0 and ds[1].shape == (3, 16, 16)
    assert UnlabeledImages(Tensors())[0].size == (12, 10)


def test_labeled_folder_and_write_image_folder(tmp_path):
    images = np.stack([rgb(i, 8) for i in range(12)])
    labels = [i % 11 for i in range(12)]
    root = write_image_folder(images, labels, tmp_path / "lab")
    (root / "03" / "broken.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 1 of 13"):
        ds = LabeledImageFolder(root, progress=False)
    assert ds.classes == [f"{i:02d}" for i in range(11)]  # zero-padded: sorted order is label order
    assert ds.skipped == 1 and len(ds) == 12 and sorted(ds.targets) == sorted(labels)
    x, y = ds[ds.files.index(root / "10" / "00010.png")]
    assert y == 10 and x.shape == (3, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert torch.allclose(x, torch.from_numpy(images[10]).permute(2, 0, 1).float() / 255)
    gray = write_image_folder(np.zeros((2, 5, 5, 1), np.uint8), [1, 0], tmp_path / "g", class_names=["a", "b"])
    assert sorted(p.relative_to(gray).as_posix() for p in find_images(gray)) == ["a/00001.png", "b/00000.png"]
    with pytest.raises(ValueError, match="uint8"):
        write_image_folder(np.zeros((2, 4, 4)), None, tmp_path / "f")
    with pytest.raises(ValueError, match="labels"):
        write_image_folder(np.zeros((2, 4, 4), np.uint8), [0], tmp_path / "f")
    with pytest.raises(ValueError, match="one\\s+subfolder per class"):
        LabeledImageFolder(write_image_folder(images[:1], None, tmp_path / "flat"))


def test_non_image_is_skipped_without_ultralytics_pip_install(tmp_path, monkeypatch):
    import ultralytics.utils.checks  # importing ultralytics patches PIL.Image.open
    import ultralytics.utils.patches  # noqa: F401

    def no_install(*args, **kwargs):
        raise AssertionError("reading a data folder must never try to pip-install a PIL plugin")

    monkeypatch.setattr(ultralytics.utils.checks, "check_requirements", no_install)
    (tmp_path / "notes.jpg").write_text("plain text")
    assert check_image(tmp_path / "notes.jpg") == "not an image"
