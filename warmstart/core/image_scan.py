"""What an image folder holds: every file is used, skipped with a reason, or ignored by a named rule.

A data folder is walked once, following symlinks exactly once: each real folder is entered at most once
(a link back to an ancestor is a loop, a second link to a folder already walked is a duplicate), and files
are de-duplicated by real path, so a symlink loop cannot multiply the training set. Nothing is dropped
silently: the ``ScanReport`` lists every entry with its fate and ``counts()`` is what a run summary records.
This module only looks at names and links; decoding is ``warmstart.core.data.check_image``'s job.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, features

# Formats PIL registers as openable that are not still photos, or that decode only with external tools.
# Their files are reported as ignored with the rule "unsupported format <suffix>".
_NOT_PHOTO_FORMATS = {
    "EPS",  # .eps/.ps: PostScript, rasterised only through Ghostscript
    "MPEG",  # video; PIL only identifies it
    "BUFR", "GRIB", "HDF5",  # weather/scientific data; PIL needs an external handler to read them
    "WMF",  # .wmf/.emf vector drawings; PIL rasterises them only on Windows
    "FITS",  # astronomy data arrays, not photos
    "IPTC",  # .iim news metadata records, not images
}
# Formats whose decoder is an optional part of the Pillow build.
_CODEC_OF = {"JPEG2000": "jpg_2000", "WEBP": "webp", "AVIF": "avif"}
# Photo formats PIL cannot read at all: named, so a folder of them says why nothing was used.
_UNREADABLE_PHOTOS = (".heic", ".heif", ".svg", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".raf", ".rw2")


def _image_suffixes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    readable, unsupported = set(), set(_UNREADABLE_PHOTOS)
    for suffix, fmt in Image.registered_extensions().items():  # also imports every PIL plugin (once)
        fmt = "JPEG" if fmt == "MPO" else fmt  # multi-picture JPEGs are opened by the JPEG plugin
        ok = fmt in Image.OPEN and fmt not in _NOT_PHOTO_FORMATS
        ok = ok and (fmt not in _CODEC_OF or bool(features.check(_CODEC_OF[fmt])))
        (readable if ok else unsupported).add(suffix.lower())
    return tuple(sorted(readable)), tuple(sorted(unsupported - readable))


IMAGE_SUFFIXES, UNSUPPORTED_SUFFIXES = _image_suffixes()
_IMAGE, _UNSUPPORTED = frozenset(IMAGE_SUFFIXES), frozenset(UNSUPPORTED_SUFFIXES)  # O(1) lookups per file

# Rules that name the path they refer to; counts() groups them by the words before the path.
_RULES_WITH_PATH = {"duplicate of ": "duplicate", "symlink loop to ": "symlink loop"}


@dataclass
class ScanReport:
    """The fate of every entry under a data source: ``used``, ``skipped (path, reason)``, ``ignored (path, rule)``.

    ``skipped`` holds what looked like an image but cannot be read ("empty file", "truncated", "not an image",
    "broken symlink", ...). ``ignored`` holds what is left out on purpose ("hidden file", "hidden folder",
    "not an image suffix", "unsupported format .heic", "duplicate of <path>", "symlink loop to <path>").
    ``dataset_items`` counts the items of a wrapped Dataset, which have no paths.

    Example:
        >>> from pathlib import Path
        >>> report = ScanReport([Path("a.png")], [(Path("b.png"), "empty file")],
        ...                     [(Path("c.png"), "duplicate of a.png"), (Path("notes.txt"), "not an image suffix")])
        >>> report.counts()  # doctest: +NORMALIZE_WHITESPACE
        {'found': 4, 'used': 1, 'skipped': 1, 'ignored': 2, 'skipped_reasons': {'empty file': 1},
         'ignored_rules': {'duplicate': 1, 'not an image suffix': 1}}
    """

    used: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)
    dataset_items: int = 0

    def counts(self) -> dict[str, Any]:
        """JSON-ready totals; ``found == used + skipped + ignored``; reasons and rules counted (sorted keys)."""
        used = len(self.used) + self.dataset_items
        rules = Counter(_rule_kind(rule) for _, rule in self.ignored)
        return {
            "found": used + len(self.skipped) + len(self.ignored),
            "used": used,
            "skipped": len(self.skipped),
            "ignored": len(self.ignored),
            "skipped_reasons": dict(sorted(Counter(why for _, why in self.skipped).items())),
            "ignored_rules": dict(sorted(rules.items())),
        }


def walk_images(root: str | Path, extra_suffixes: tuple[str, ...] = ()) -> ScanReport:
    """Walk ``root`` once; image-suffixed files (not yet decoded) go to ``used``, sorted by path.

    ``extra_suffixes`` (lower case, with the dot) count as images too: ``(".npy",)`` when reading arrays for
    ``channels=`` (``warmstart.core.channels``); the default keeps the RGB scan exactly as it was.

    Symlinks are followed once: a file's own path wins over a link to it, a folder reached again is ignored
    ("symlink loop to <path>" when it is an ancestor, else "duplicate of <path>"), a dangling link is
    skipped as "broken symlink". Files inside hidden folders are listed as ignored, never opened.
    Raises FileNotFoundError if ``root`` does not exist.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (4, 4)).save(root / "a.png")
        >>> (root / "loop").symlink_to(root)
        >>> report = walk_images(root)
        >>> [p.name for p in report.used], [(p.name, rule.split()[0]) for p, rule in report.ignored]
        (['a.png'], [('loop', 'symlink')])
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist. Pass the folder that holds your images.")
    report = ScanReport()
    images = _IMAGE | frozenset(extra_suffixes)
    if not root.is_dir():
        _classify_file(root, root.suffix.lower(), _is_regular_file(root), None, report, images)
        return report
    walked: dict[str, Path] = {}  # real folder -> the path it was walked under
    # (path, lower-case suffix, real path, reached through a link, regular file)
    files: list[tuple[Path, str, str, bool, bool]] = []
    todo: list[tuple[Path, bool]] = [(root, False)]
    # Symlinked folders wait until every plain folder is walked, so a folder's own path wins over a link to it.
    links: list[Path] = []
    while todo or links:
        if todo:
            folder, via_link = todo.pop()
        else:
            folder, via_link = links.pop(0), True
        real = os.path.realpath(folder)
        if real in walked:  # only links can lead back to a walked folder
            kind = "symlink loop to" if _is_within(os.path.realpath(folder.parent), real) else "duplicate of"
            report.ignored.append((folder, f"{kind} {walked[real]}"))
            continue
        walked[real] = folder
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            report.skipped.append((folder, f"unreadable folder ({type(err).__name__})"))
            continue
        subfolders = []
        for entry in entries:
            path = folder / entry.name
            suffix = os.path.splitext(entry.name)[1].lower()
            if entry.name.startswith("."):  # .git, .DS_Store, macOS ._ forks: never training data
                if entry.is_dir(follow_symlinks=False):
                    report.ignored += [(p, "hidden folder") for p in _all_entries(path)]
                elif entry.is_dir():
                    report.ignored.append((path, "hidden folder"))  # a link: not followed, one entry
                else:
                    report.ignored.append((path, "hidden file"))
            elif entry.is_symlink():
                if not os.path.exists(path):
                    report.skipped.append((path, "broken symlink"))
                elif entry.is_dir():
                    links.append(path)
                else:
                    files.append((path, suffix, os.path.realpath(path), True, entry.is_file()))
            elif entry.is_dir():
                subfolders.append((path, via_link))
            else:
                regular = entry.is_file(follow_symlinks=False)
                files.append((path, suffix, os.path.join(real, entry.name), via_link, regular))
        todo += reversed(subfolders)  # popped in name order
    # One item per real file: its own path (not through a link) wins, then the first by name.
    best: dict[str, tuple[bool, str, Path]] = {}  # real file -> (reached through a link, path as text, path)
    for path, suffix, real, via_link, _ in files:
        if suffix in images:
            candidate = (via_link, str(path), path)
            best[real] = min(best.get(real, candidate), candidate)
    for path, suffix, real, _, regular in files:
        _classify_file(path, suffix, regular, best[real][2] if real in best else None, report, images)
    report.used.sort(key=str)
    report.skipped.sort(key=lambda item: str(item[0]))
    report.ignored.sort(key=lambda item: str(item[0]))
    return report


def _classify_file(path: Path, suffix: str, regular: bool, original: Path | None, report: ScanReport,
                   images: frozenset[str] = _IMAGE) -> None:
    if suffix not in images:
        rule = f"unsupported format {suffix}" if suffix in _UNSUPPORTED else "not an image suffix"
        report.ignored.append((path, rule))
    elif original is not None and original is not path:
        report.ignored.append((path, f"duplicate of {original}"))
    elif not regular:
        # A FIFO or device named .jpg: opening it can block forever or read endlessly.
        report.skipped.append((path, "not a regular file"))
    else:
        report.used.append(path)


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _all_entries(folder: Path) -> list[Path]:
    """Every entry under ``folder`` without following links (links, loops included, are single entries)."""
    out: list[Path] = []
    todo = [folder]
    while todo:
        try:
            entries = sorted(os.scandir(todo.pop()), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                todo.append(Path(entry.path))
            else:
                out.append(Path(entry.path))
    return out


def _rule_kind(rule: str) -> str:
    for prefix, kind in _RULES_WITH_PATH.items():
        if rule.startswith(prefix):
            return kind
    return rule
