"""``embed(format=...)`` / ``warmstart embed --format npy|csv|parquet``: the same numbers with their file names."""

from __future__ import annotations

import csv
import importlib.abc
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from ssl_helpers import digit_folder, one_thread, tiny_cnn  # noqa: F401 (one_thread: autouse fixture)

from warmstart.cli import main
from warmstart.pretraining import embed
from warmstart.pretraining.embedding_files import embedding_columns


def _read_csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    return header, [r[0] for r in body], np.array([[np.float32(v) for v in r[1:]] for r in body], np.float32)


def test_csv_holds_the_npy_values_row_by_row_with_file_names(tmp_path: Path) -> None:
    data = digit_folder(tmp_path / "data", 6)
    model = tiny_cnn()
    feats = embed(data, model, out=tmp_path / "npy", image_size=32, progress=False)
    again = embed(data, model, out=tmp_path / "csv", image_size=32, progress=False, format="csv")
    npy = np.load(tmp_path / "npy" / "embeddings.npy")
    files = (tmp_path / "npy" / "files.txt").read_text().splitlines()
    header, paths, values = _read_csv(tmp_path / "csv" / "embeddings.csv")
    assert header == embedding_columns(feats.shape[1]) and header[:2] == ["path", "embedding_0"]
    assert paths == files and len(set(paths)) == 6 and all(Path(p).is_file() for p in paths)
    np.testing.assert_array_equal(values, npy)  # exact: 9 significant digits round-trip float32
    np.testing.assert_array_equal(again, feats)
    assert not (tmp_path / "csv" / "embeddings.npy").exists()  # one format per call, as asked


def test_cli_embed_format_csv(tmp_path: Path, capsys) -> None:
    data = digit_folder(tmp_path / "data", 4)
    out = tmp_path / "emb"
    assert main(["embed", "--data", str(data), "--model", "torchvision/resnet18", "--out", str(out),
                 "--image-size", "32", "--format", "csv", "--no-progress"]) == 0
    assert "embeddings.csv" in capsys.readouterr().out
    header, paths, values = _read_csv(out / "embeddings.csv")
    assert len(header) == 513 and values.shape == (4, 512) and np.isfinite(values).all()
    assert [Path(p).name for p in paths] == sorted(Path(p).name for p in paths)


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pyarrow":
            raise ImportError(f"blocked: {name}")


def test_parquet_without_pyarrow_is_refused_before_any_image_is_read(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "meta_path", [_Block(), *sys.meta_path])
    for module in [m for m in sys.modules if m.split(".")[0] == "pyarrow"]:
        monkeypatch.delitem(sys.modules, module)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        embed(tmp_path / "no-such-folder", "torchvision/resnet18", out=tmp_path / "o", format="parquet")
    with pytest.raises(ValueError, match="valid formats: npy, csv, parquet"):
        embed(tmp_path / "no-such-folder", "torchvision/resnet18", format="xlsx")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow is not installed")
def test_parquet_holds_the_same_table(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    data = digit_folder(tmp_path / "data", 4)
    feats = embed(data, tiny_cnn(), out=tmp_path / "pq", image_size=32, progress=False, format="parquet")
    table = pq.read_table(tmp_path / "pq" / "embeddings.parquet")
    assert table.column_names == embedding_columns(feats.shape[1])
    values = np.stack([table.column(c).to_numpy() for c in table.column_names[1:]], axis=1)
    np.testing.assert_array_equal(values, feats)
