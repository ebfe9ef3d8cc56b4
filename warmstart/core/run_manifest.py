"""The list of files a run wrote, so ``--overwrite`` deletes those and nothing else (ARCHITECTURE.md rule 11).

A run folder is shared with its user: people drop notes, plots or their own checkpoints next to warmstart's
outputs. ``overwrite`` therefore never removes folders wholesale: it deletes exactly the files named in
``.warmstart-manifest.json`` (written by the previous run, updated at every checkpoint), removes folders that
became empty by that, and names everything else it left in place.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

MANIFEST_NAME = ".warmstart-manifest.json"
_FORMAT = "warmstart-manifest/1"


class RunManifest:
    """The set of files (relative to ``root``) that warmstart wrote into a run folder.

    Paths outside ``root`` are refused, so a manifest can never name a file elsewhere on disk. ``save`` writes
    atomically; ``load`` of a folder without a manifest gives an empty one.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> m = RunManifest(root)
        >>> _ = (root / "summary.json").write_text("{}")
        >>> m.add([root / "summary.json"]); _ = m.save()
        >>> sorted(RunManifest.load(root).files)
        ['.warmstart-manifest.json', 'summary.json']
    """

    def __init__(self, root: str | Path, files: Iterable[str] = ()) -> None:
        self.root = Path(root)
        self.files: set[str] = {MANIFEST_NAME, *files}

    @classmethod
    def load(cls, root: str | Path) -> RunManifest:
        """The manifest of ``root`` (empty when there is none or it is unreadable, which removes nothing).

        Example:
            >>> import tempfile
            >>> sorted(RunManifest.load(tempfile.mkdtemp()).files)
            ['.warmstart-manifest.json']
        """
        path = Path(root) / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
            files = [str(f) for f in data["files"]] if data.get("format") == _FORMAT else []
        except (OSError, ValueError, KeyError, TypeError):
            files = []  # a damaged manifest must not widen what gets deleted: treat it as empty
        manifest = cls(root)
        for rel in files:
            if _is_inside(rel):
                manifest.files.add(rel)
        return manifest

    def add(self, paths: Iterable[str | Path]) -> None:
        """Record files (absolute or relative to ``root``); folders add every file below them.

        Example:
            >>> RunManifest("/tmp/run").add(["/etc/passwd"])
            Traceback (most recent call last):
            ...
            ValueError: /etc/passwd is outside the run folder /tmp/run; a manifest only lists the run's own files
        """
        for path in paths:
            path = Path(path)
            full = path if path.is_absolute() else self.root / path
            # A folder adds the files below it (links found inside are skipped: they may lead anywhere); a link
            # named explicitly (a logger's `latest-run`) is recorded itself, and removing it unlinks only the link.
            if full.is_dir() and not full.is_symlink():
                self.add(p for p in full.rglob("*") if p.is_file() and not p.is_symlink())
                continue
            try:
                rel = full.relative_to(self.root)
            except ValueError:
                raise ValueError(f"{path} is outside the run folder {self.root}; a manifest only lists the run's "
                                 "own files") from None
            self.files.add(rel.as_posix())

    def save(self) -> Path:
        """Write ``root/.warmstart-manifest.json`` atomically (readers never see half a list)."""
        from .checkpoints import atomic_write

        text = json.dumps({"format": _FORMAT, "files": sorted(self.files)}, indent=1)
        return atomic_write(self.root / MANIFEST_NAME, lambda tmp: Path(tmp).write_text(text))


def remove_previous_run(root: str | Path) -> tuple[list[Path], list[Path]]:
    """Delete the files the previous run's manifest lists; return ``(removed, left)``.

    ``left`` are the files under ``root`` that warmstart did not write (or a killed run wrote after its last
    manifest update): they stay where they are, and the caller names them in a warning. Folders left empty by
    the removal are removed too; symlinks are removed as links, never followed.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "logs").mkdir(); _ = (root / "logs" / "m.csv").write_text("x")
        >>> _ = (root / "mine.txt").write_text("y")
        >>> m = RunManifest(root); m.add([root / "logs"]); _ = m.save()
        >>> removed, left = remove_previous_run(root)
        >>> [p.name for p in left], (root / "logs").exists()
        (['mine.txt'], False)
    """
    root = Path(root)
    manifest = RunManifest.load(root)
    removed: list[Path] = []
    # The manifest goes last: if this is interrupted, the next overwrite still knows what to remove.
    for rel in sorted(manifest.files - {MANIFEST_NAME}) + [MANIFEST_NAME]:
        path = root / rel
        if path.is_symlink() or path.is_file():
            path.unlink()
            removed.append(path)
    _remove_empty_dirs(root, {(root / rel).parent for rel in manifest.files})
    left = sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()) if root.is_dir() else []
    return removed, left


def _remove_empty_dirs(root: Path, dirs: set[Path]) -> None:
    # Deepest first, and only folders that held a listed file: an empty folder the user made stays.
    for folder in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        while folder != root and folder.is_dir() and root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty: something of the user's is inside
            folder = folder.parent


def _is_inside(rel: str) -> bool:
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts
