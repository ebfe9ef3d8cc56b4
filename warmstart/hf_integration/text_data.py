"""Raw text for continued pretraining: .txt (one document per line), a folder (one document per file), CSV / JSONL.

Every input line or file is used, skipped or repaired, and counted, never a crash: empty documents are skipped,
bytes that are not UTF-8 are dropped from their document, documents longer than ``max_chars`` are truncated, JSON
lines that do not parse and rows without the text column are skipped. ``TextCorpus.stats`` holds the counts, which
``continue_pretraining`` writes into its summary. Pure Python: no transformers import.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LINE_FILES = (".txt", ".text")  # one document per line (a file of its own); one document per file inside a folder
TABLE_FILES = (".csv", ".tsv")
JSON_FILES = (".jsonl", ".ndjson", ".json")
MAX_CHARS = 100_000  # ~25k tokens: longer documents are truncated (counted), so one huge line cannot exhaust memory


@dataclass
class TextCorpus:
    """The documents read from a source, and what happened to every input (``stats``).

    Example:
        >>> corpus = read_texts(["a first document", "", "a second one"])
        >>> corpus.texts, corpus.stats["empty"]
        (['a first document', 'a second one'], 1)
    """

    texts: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=lambda: {
        "files": 0, "documents": 0, "empty": 0, "non_utf8": 0, "truncated": 0, "bad_json_lines": 0,
        "missing_column": 0, "ignored_files": 0})

    def add(self, text: str | None, max_chars: int) -> None:
        """Keep ``text`` as a document (truncated to ``max_chars``), or count it as empty."""
        text = (text or "").strip()
        if not text:
            self.stats["empty"] += 1
            return
        if len(text) > max_chars:
            text = text[:max_chars]
            self.stats["truncated"] += 1
        self.texts.append(text)
        self.stats["documents"] += 1


def _decode(raw: bytes, corpus: TextCorpus) -> str:
    """UTF-8 text of ``raw``; invalid bytes are dropped and the document is counted as ``non_utf8``."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        corpus.stats["non_utf8"] += 1
        return raw.decode("utf-8", errors="ignore")


def _decoded_lines(path: Path, corpus: TextCorpus) -> Iterator[str]:
    """The file's lines, each decoded on its own so one bad byte costs one line's bytes, not the file."""
    for i, raw in enumerate(path.read_bytes().splitlines(keepends=True)):
        yield _decode(raw.removeprefix(b"\xef\xbb\xbf") if i == 0 else raw, corpus)


def _read_lines(path: Path, corpus: TextCorpus, max_chars: int) -> None:
    for line in _decoded_lines(path, corpus):
        corpus.add(line, max_chars)


def _read_table(path: Path, corpus: TextCorpus, column: str, max_chars: int) -> None:
    text = "".join(_decoded_lines(path, corpus))
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    if reader.fieldnames is None:
        return  # an empty file: no rows, nothing to count
    if column not in reader.fieldnames:
        raise ValueError(f"{path} has no column {column!r}; its columns are {reader.fieldnames}. "
                         f"Pass text_column=<name> (CLI: --text-column).")
    for row in reader:
        corpus.add(row.get(column), max_chars)


def _json_rows(path: Path, corpus: TextCorpus) -> Iterator[object]:
    lines = list(_decoded_lines(path, corpus))
    if path.suffix.lower() == ".json" and "".join(lines).lstrip().startswith("["):
        try:  # a .json file holding one array of objects
            yield from json.loads("".join(lines))
            return
        except json.JSONDecodeError:
            corpus.stats["bad_json_lines"] += 1
            return
    for line in lines:
        if not line.strip():
            corpus.stats["empty"] += 1
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            corpus.stats["bad_json_lines"] += 1


def _read_json(path: Path, corpus: TextCorpus, column: str, max_chars: int) -> None:
    rows = seen = 0
    for row in _json_rows(path, corpus):
        rows += 1
        if isinstance(row, dict) and column in row:
            seen += 1
            value = row[column]
            corpus.add(value if isinstance(value, str) else None, max_chars)
        else:
            corpus.stats["missing_column"] += 1
    if rows and not seen:
        keys = sorted({k for r in _json_rows(path, TextCorpus()) if isinstance(r, dict) for k in r})
        raise ValueError(f"no row of {path} has the key {column!r}; its keys are {keys[:20]}. "
                         f"Pass text_column=<name> (CLI: --text-column).")


def _read_file(path: Path, corpus: TextCorpus, column: str, max_chars: int, whole_file: bool) -> None:
    suffix = path.suffix.lower()
    corpus.stats["files"] += 1
    if suffix in TABLE_FILES:
        _read_table(path, corpus, column, max_chars)
    elif suffix in JSON_FILES:
        _read_json(path, corpus, column, max_chars)
    elif whole_file:
        corpus.add(_decode(path.read_bytes(), corpus), max_chars)
    else:
        _read_lines(path, corpus, max_chars)


def read_texts(data: str | Path | Sequence[str], *, text_column: str = "text",
               max_chars: int = MAX_CHARS) -> TextCorpus:
    """Read documents from ``data``: a file, a folder, or a list of strings.

    - a ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.json`` file: one document per row, from ``text_column``;
    - any other file (``.txt``, ...): one document per line;
    - a folder (searched recursively, hidden entries skipped): each ``.txt``/``.text`` file is *one* document,
      CSV/JSON files are read as above, other files are ignored (counted in ``ignored_files``);
    - a list of strings: one document each.

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` when the text column is missing or no
    document has any text.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
        >>> _ = f.write_bytes(b"first line\\n\\nsecond \\xff line\\n")
        >>> c = read_texts(f)
        >>> c.texts, c.stats["empty"], c.stats["non_utf8"]
        (['first line', 'second  line'], 1, 1)
    """
    if not isinstance(max_chars, int) or max_chars < 1:
        raise ValueError(f"max_chars must be a positive whole number, got {max_chars!r}")
    corpus = TextCorpus()
    if isinstance(data, (list, tuple)):
        for text in data:
            corpus.add(text if isinstance(text, str) else None, max_chars)
        source = f"the list of {len(data)} strings"
    else:
        path = Path(data).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"text data {path} does not exist (expected a .txt/.csv/.jsonl file or a "
                                    "folder of .txt files)")
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                if any(part.startswith(".") for part in f.relative_to(path).parts):
                    continue
                if f.suffix.lower() in LINE_FILES + TABLE_FILES + JSON_FILES:
                    _read_file(f, corpus, text_column, max_chars, whole_file=True)
                else:
                    corpus.stats["ignored_files"] += 1
        else:
            _read_file(path, corpus, text_column, max_chars, whole_file=False)
        source = str(path)
    if not corpus.texts:
        counts = ", ".join(f"{k}={v}" for k, v in corpus.stats.items() if v)
        raise ValueError(f"no text found in {source} ({counts or 'nothing to read'}); expected one document per "
                         f"line of a .txt file, .txt files in a folder, or a {text_column!r} column in CSV/JSONL")
    return corpus
