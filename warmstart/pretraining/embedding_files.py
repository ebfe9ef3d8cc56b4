"""Writing ``embed()``'s features to disk: ``.npy`` + ``files.txt``, a CSV, or a Parquet table, with file names.

One row per image in every format. ``npy`` is the array plus ``files.txt`` (row ``i`` <-> line ``i``); ``csv`` and
``parquet`` are one table with a ``path`` column, then ``embedding_0`` .. ``embedding_{D-1}``, the form that
spreadsheets, pandas, DuckDB and embedding viewers read. CSV values are written with 9 significant digits, which
reads back to the identical float32 (so the CSV and the ``.npy`` hold the same numbers). Parquet needs ``pyarrow``;
without it the format is refused before any image is embedded.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.checkpoints import atomic_write

FORMATS = ("npy", "csv", "parquet")
FILE_NAMES = {"npy": "embeddings.npy", "csv": "embeddings.csv", "parquet": "embeddings.parquet"}


def check_format(format: str) -> str:  # noqa: A002 - the CLI's --format
    """Validate an embeddings format; ``"parquet"`` also needs ``pyarrow`` importable.

    Example:
        >>> check_format("CSV")
        'csv'
        >>> check_format("xlsx")
        Traceback (most recent call last):
        ...
        ValueError: unknown embeddings format 'xlsx'; valid formats: npy, csv, parquet
    """
    name = str(format).lower()
    if name not in FORMATS:
        raise ValueError(f"unknown embeddings format {format!r}; valid formats: {', '.join(FORMATS)}")
    if name == "parquet" and not _findable("pyarrow"):
        raise ImportError("format='parquet' needs the 'pyarrow' package, which is not installed. Install it with: "
                          "pip install pyarrow  (or use --format csv)")
    return name


def embedding_columns(dim: int) -> list[str]:
    """Column names of the CSV / Parquet table: ``path``, then one per feature.

    Example:
        >>> embedding_columns(3)
        ['path', 'embedding_0', 'embedding_1', 'embedding_2']
    """
    return ["path"] + [f"embedding_{i}" for i in range(dim)]


def write_embeddings(out: str | Path, features: np.ndarray, names: Sequence[str], format: str = "npy") -> Path:  # noqa: A002
    """Write ``features`` (N, D) with their file ``names`` to ``out`` in ``format``; return the embeddings file.

    Every file is written atomically (a reader never sees half a table).

    Example:
        >>> import tempfile
        >>> p = write_embeddings(tempfile.mkdtemp(), np.eye(2, dtype=np.float32), ["a.png", "b.png"], "csv")
        >>> print(p.read_text().strip())
        path,embedding_0,embedding_1
        a.png,1,0
        b.png,0,1
    """
    name = check_format(format)
    if features.ndim != 2 or len(features) != len(names):
        raise ValueError(f"need one row per name: features {features.shape} vs {len(names)} names")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / FILE_NAMES[name]
    if name == "npy":
        def save(tmp: Path) -> None:  # np.save appends ".npy" to names without it: write through a file object
            with open(tmp, "wb") as f:
                np.save(f, features)

        atomic_write(target, save)
        text = "".join(f"{n}\n" for n in names)
        atomic_write(out / "files.txt", lambda tmp: Path(tmp).write_text(text))
    elif name == "csv":
        atomic_write(target, lambda tmp: _write_csv(tmp, features, names))
    else:
        atomic_write(target, lambda tmp: _write_parquet(tmp, features, names))
    return target


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocking finder raises; a None entry in sys.modules gives ValueError
        return False


def _write_csv(path: Path, features: np.ndarray, names: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(embedding_columns(features.shape[1]))
        for name, row in zip(names, features.astype(np.float32)):
            writer.writerow([name, *(f"{v:.9g}" for v in row.tolist())])  # 9 digits: float32 round-trips exactly


def _write_parquet(path: Path, features: np.ndarray, names: Sequence[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = embedding_columns(features.shape[1])
    arrays = [pa.array(list(names), pa.string())] + [pa.array(features[:, i].astype(np.float32))
                                                     for i in range(features.shape[1])]
    pq.write_table(pa.Table.from_arrays(arrays, names=columns), str(path))


__all__ = ["FILE_NAMES", "FORMATS", "check_format", "embedding_columns", "write_embeddings"]
