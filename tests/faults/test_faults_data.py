"""Bad image folders, done for real: symlink loops, links, broken links, FIFOs, foreign and hidden files,
files corrupted after the scan. Every file must end up used, skipped with a reason, or ignored by a rule."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from warmstart.core.data import (
    IMAGE_SUFFIXES,
    LabeledImageFolder,
    UnlabeledImages,
    check_image,
    find_images,
    write_image_folder,
)


def solid(value: int, size: int = 8) -> np.ndarray:
    """A constant-colour uint8 RGB image: a served image says which file it came from."""
    return np.full((size, size, 3), value, np.uint8)


def all_entries(root: Path) -> set[Path]:
    """Every file, symlink and special file under ``root`` without following links (what `find` lists)."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        out |= {here / n for n in filenames}
        out |= {here / d for d in dirnames if (here / d).is_symlink()}  # os.walk lists dir links as dirs
    return out


def quiet(build, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(*args, **kwargs)


def test_symlink_loop_and_links_count_each_image_once(tmp_path):
    root = tmp_path / "data"
    write_image_folder(np.stack([solid(i) for i in range(16)]), None, root / "a")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # a cycle: walking it never ends
    (root / "a" / "link.png").symlink_to(root / "a" / "00003.png")  # a second name for one file
    (root / "dangling.png").symlink_to(root / "gone.png")

    ds = quiet(UnlabeledImages, root, progress=False)

    assert len(ds) == 16 and len({p.resolve() for p in ds.files}) == 16
    assert ds.files == [root / "a" / f"{i:05d}.png" for i in range(16)]  # the file's own path wins over links
    assert find_images(root) == ds.files  # a broken link is not an image file
    assert sorted(int(np.asarray(ds[i])[0, 0, 0]) for i in range(len(ds))) == list(range(16))
    assert dict(ds.scan.ignored) == {
        root / "a" / "link.png": f"duplicate of {root / 'a' / '00003.png'}",
        root / "a" / "loop": f"symlink loop to {root}",
    }
    assert ds.scan.skipped == [(root / "dangling.png", "broken symlink")] and ds.skipped == 1
    assert ds.scan.counts() == {
        "found": 19, "used": 16, "skipped": 1, "ignored": 2,
        "skipped_reasons": {"broken symlink": 1}, "ignored_rules": {"duplicate": 1, "symlink loop": 1},
    }
    assert {p for p in ds.scan.used} | {p for p, _ in ds.scan.skipped + ds.scan.ignored} == all_entries(root)


def test_two_links_to_one_folder_count_its_images_once(tmp_path):
    root = tmp_path / "data"
    write_image_folder(np.stack([solid(i) for i in range(3)]), None, root / "real")
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    (root / "zz").symlink_to(root / "real", target_is_directory=True)
    outside = write_image_folder(np.stack([solid(9)]), None, tmp_path / "elsewhere")
    (root / "more").symlink_to(outside, target_is_directory=True)  # a link out of the folder is followed once

    ds = UnlabeledImages(root, progress=False)

    assert ds.files == [root / "more" / "00000.png"] + [root / "real" / f"{i:05d}.png" for i in range(3)]
    assert dict(ds.scan.ignored) == {root / "alias": f"duplicate of {root / 'real'}",
                                     root / "zz": f"duplicate of {root / 'real'}"}
    assert ds.scan.counts()["ignored_rules"] == {"duplicate": 2}


def test_every_file_is_used_skipped_or_ignored_by_a_rule(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / ".git" / "objects").mkdir(parents=True)
    Image.fromarray(solid(10)).save(root / "a.png")
    Image.fromarray(solid(20)).save(root / "sub" / "b.JPG")
    Image.fromarray(solid(30)).save(root / "sub" / "c.gif")
    Image.fromarray(solid(40)).save(root / "sub" / "d.ppm")
    Image.fromarray(solid(50)).save(root / ".hidden.png")
    (root / ".git" / "objects" / "ab12").write_bytes(b"blob")
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "README.md").write_text("not an image")
    (root / "labels.csv").write_text("a,1\n")
    (root / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (root / "figure.eps").write_text("%!PS-Adobe-3.0 EPSF-3.0\n")
    (root / "zero.png").write_bytes(b"")
    full = (root / "sub" / "b.JPG").read_bytes()
    (root / "sub" / "half.jpg").write_bytes(full[: len(full) // 2])
    (root / "notes.jpg").write_text("a text file named .jpg\n" * 10)

    ds = quiet(UnlabeledImages, root, progress=False)

    assert ds.files == [root / "a.png", root / "sub" / "b.JPG", root / "sub" / "c.gif", root / "sub" / "d.ppm"]
    assert [int(np.asarray(ds[i])[0, 0, 0]) for i in range(4)][::2] == [10, 30]  # gif decoded, lossless formats
    assert dict(ds.scan.skipped) == {
        root / "zero.png": "empty file", root / "sub" / "half.jpg": "truncated", root / "notes.jpg": "not an image"}
    assert dict(ds.scan.ignored) == {
        root / ".hidden.png": "hidden file",
        root / ".git" / "HEAD": "hidden folder",
        root / ".git" / "objects" / "ab12": "hidden folder",
        root / "README.md": "not an image suffix",
        root / "labels.csv": "not an image suffix",
        root / "phone.heic": "unsupported format .heic",
        root / "figure.eps": "unsupported format .eps",
    }
    counts = ds.scan.counts()
    assert counts["found"] == len(all_entries(root)) == 14
    assert (counts["used"], counts["skipped"], counts["ignored"]) == (4, 3, 7)
    assert counts["skipped_reasons"] == {"empty file": 1, "not an image": 1, "truncated": 1}
    assert counts["ignored_rules"] == {"hidden file": 1, "hidden folder": 2, "not an image suffix": 2,
                                       "unsupported format .eps": 1, "unsupported format .heic": 1}
    assert ds.skipped == 3 and ds.skipped_files == ds.scan.skipped


def test_gif_and_other_pil_still_formats_are_read(tmp_path):
    assert {".gif", ".png", ".jpg", ".ppm", ".tga", ".pcx", ".qoi", ".ico"} <= set(IMAGE_SUFFIXES)
    assert not {".eps", ".ps", ".pdf", ".mpeg", ".h5", ".wmf", ".txt"} & set(IMAGE_SUFFIXES)
    frames = [Image.fromarray(solid(v)).convert("P", palette=Image.Palette.ADAPTIVE) for v in (200, 90)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    lossless = {}
    for suffix in (".bmp", ".tga", ".pcx", ".ppm", ".qoi", ".sgi", ".im", ".tiff"):
        Image.fromarray(solid(7 * len(lossless) + 1)).save(tmp_path / f"x{suffix}")
        lossless[tmp_path / f"x{suffix}"] = 7 * len(lossless) + 1

    ds = UnlabeledImages(tmp_path, progress=False)

    assert ds.skipped == 0 and ds.scan.ignored == [] and len(ds) == 1 + len(lossless)
    first = ds[ds.files.index(tmp_path / "anim.gif")]
    assert first.mode == "RGB" and (np.asarray(first) == 200).all()  # the first frame, not the second (90)
    for path, value in lossless.items():
        assert (np.asarray(ds[ds.files.index(path)]) == value).all(), path.suffix


def test_labeled_folder_never_pairs_an_image_with_another_files_label(tmp_path):
    colours = [0, 80, 160]
    labels = [k for k in range(3) for _ in range(3)]
    root = write_image_folder(np.stack([solid(colours[k]) for k in labels]), labels, tmp_path / "lab")
    ds = LabeledImageFolder(root, progress=False)  # every file decodes now
    assert ds.skipped == 0 and ds.targets == labels
    last_of_class0 = ds.files[2]
    data = last_of_class0.read_bytes()
    last_of_class0.write_bytes(data[: len(data) // 2])  # the file breaks after the scan (e.g. a sync rewrote it)

    with pytest.warns(UserWarning, match="skipping unreadable image"):
        pairs = [ds[i] for i in range(len(ds))]

    for x, y in pairs:
        assert x.shape == (3, 8, 8)
        assert round(float(x.mean()) * 255) == colours[y] and float(x.std()) == 0  # image and label agree
    assert [y for _, y in pairs] == [0, 0, 1, 1, 1, 1, 2, 2, 2]  # the next readable (image, label) pair
    assert ds.skipped == 1
    counts = ds.scan.counts()
    assert (counts["used"], counts["skipped"], counts["skipped_reasons"]) == (8, 1, {"unreadable at load time": 1})


def test_labeled_folder_scan_accounts_for_loose_hidden_and_linked_files(tmp_path):
    root = write_image_folder(np.stack([solid(0), solid(90)]), [0, 1], tmp_path / "lab", class_names=["cat", "dog"])
    Image.fromarray(solid(5)).save(root / "loose.png")  # not inside a class folder: which label would it get?
    (root / ".thumbs").mkdir()
    Image.fromarray(solid(5)).save(root / ".thumbs" / "t.png")
    (root / "cat" / "again.png").symlink_to(root / "cat" / "00000.png")
    (root / "kitten").symlink_to(root / "cat", target_is_directory=True)
    (root / "dog" / "loop").symlink_to(root, target_is_directory=True)

    ds = LabeledImageFolder(root, progress=False)

    assert ds.classes == ["cat", "dog"] and ds.files == [root / "cat" / "00000.png", root / "dog" / "00001.png"]
    assert dict(ds.scan.ignored) == {
        root / "loose.png": "not in a class folder",
        root / ".thumbs" / "t.png": "hidden folder",
        root / "cat" / "again.png": f"duplicate of {root / 'cat' / '00000.png'}",
        root / "kitten": f"duplicate of {root / 'cat'}",
        root / "dog" / "loop": f"symlink loop to {root}",
    }
    assert ds.scan.counts()["found"] == len(all_entries(root)) == 7


def test_path_list_and_dataset_sources_report_their_items(tmp_path):
    root = write_image_folder(np.stack([solid(0), solid(1)]), None, tmp_path / "imgs")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    assert check_image(tmp_path / "dangling.png") == "broken symlink"
    assert check_image(tmp_path / "missing.png") == "missing"
    paths = sorted(root.iterdir()) + [tmp_path / "dangling.png"]
    ds = quiet(UnlabeledImages, paths, progress=False)
    assert ds.scan.used == paths[:2] and ds.scan.skipped == [(tmp_path / "dangling.png", "broken symlink")]
    assert ds.scan.counts()["found"] == 3
    from warmstart.core.data import _ListDataset

    wrapped = UnlabeledImages(_ListDataset([solid(0)] * 5))
    assert wrapped.scan.counts() == {"found": 5, "used": 5, "skipped": 0, "ignored": 0,
                                     "skipped_reasons": {}, "ignored_rules": {}}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_named_pipe_with_an_image_name_is_skipped_not_opened(tmp_path):
    # Opening a FIFO for reading blocks until a writer appears: a scan that opens it hangs forever,
    # so the scan runs in a child process with a timeout.
    write_image_folder(np.stack([solid(0)]), None, tmp_path)
    os.mkfifo(tmp_path / "pipe.png")
    code = ("import sys, warnings; warnings.simplefilter('ignore'); from warmstart.core.data import UnlabeledImages;"
            "ds = UnlabeledImages(sys.argv[1], progress=False); print(len(ds), ds.scan.skipped[0][1])")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "not", "a", "regular", "file"]
