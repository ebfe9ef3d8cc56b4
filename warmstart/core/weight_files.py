"""Read weight files, and when one cannot be read, say which file and what is wrong with it.

safetensors and torch report a damaged file from deep inside their readers ("header too large", "invalid load
key", "PytorchStreamReader failed"), without the file name. Users meet these after an interrupted copy or save,
a file renamed to the wrong suffix, or a checkpoint that pickled whole objects. Each becomes a ValueError that
names the file, the problem (empty, truncated, not a weights file, refused for safety) and the fix
(ARCHITECTURE.md rule 8). Torch files are only read with ``torch.load(weights_only=True)`` (rule 6).
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_MAX_HEADER = 100_000_000  # safetensors refuses larger JSON headers; a bigger length is not a header at all
_AGAIN = "export or copy it again (an interrupted save, copy or download leaves such files)"


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a ``.safetensors`` file; a ValueError naming the file when it is not a readable one.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from safetensors.torch import save_file
        >>> p = Path(tempfile.mkdtemp()) / "w.safetensors"
        >>> save_file({"w": torch.ones(2)}, str(p))
        >>> list(read_safetensors(p))
        ['w']
        >>> _ = p.write_bytes(p.read_bytes()[:-4])
        >>> read_safetensors(p)
        Traceback (most recent call last):
        ...
        ValueError: cannot read weights from ...: it is truncated: ...
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        # from None: the message carries the reader's own words; its traceback only shows safetensors' internals.
        raise ValueError(f"cannot read weights from {path}: {safetensors_problem(path, err)}") from None


def read_torch(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a ValueError naming the file and the problem on failure.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> p = Path(tempfile.mkdtemp()) / "w.pt"
        >>> torch.save({"w": torch.ones(2)}, p)
        >>> read_torch(p)["w"].tolist()
        [1.0, 1.0]
        >>> _ = p.write_bytes(b"not weights")
        >>> read_torch(p)
        Traceback (most recent call last):
        ...
        ValueError: cannot read weights from ...: it is not a torch weights file ...
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises OSError, RuntimeError, EOFError, UnpicklingError... for bad files
        raise ValueError(f"cannot read weights from {path}: {torch_problem(path, err)}") from None


def safetensors_problem(path: Path, err: BaseException) -> str:
    """What is wrong with a ``.safetensors`` file the reader refused, found by reading its header ourselves.

    A safetensors file is an 8-byte little-endian header length, a JSON header (``{"name": {"dtype", "shape",
    "data_offsets"}}``), then the tensor bytes.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> p = Path(tempfile.mkdtemp()) / "w.safetensors"
        >>> _ = p.write_bytes(b"")
        >>> safetensors_problem(p, OSError())
        'it is empty (0 bytes): export or copy it again (an interrupted save, copy or download leaves such files).'
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        first = f.read(1)
        if size == 0:
            return f"it is empty (0 bytes): {_AGAIN}."
        if head.startswith(_ZIP_MAGIC):
            return ("it is not a safetensors file but a torch.save archive with a .safetensors name; rename it to "
                    ".pt (warmstart reads it with torch.load(weights_only=True)).")
        if size < 8:
            return f"it is truncated ({size} bytes, less than the 8-byte header length): {_AGAIN}."
        length = int.from_bytes(head, "little")
        if first != b"{" or length > _MAX_HEADER:
            return (f"it is not a safetensors file (one starts with an 8-byte header length and a JSON header; "
                    f"this one starts with {head!r}). Pass a file written by safetensors or "
                    "warmstart.core.checkpoints.save_weights, or name a torch.save file .pt.")
        if 8 + length > size:
            return f"it is truncated: its header alone needs {8 + length} bytes and the file has {size}; {_AGAIN}."
        f.seek(8)
        try:
            header = json.loads(f.read(length))
        except ValueError:
            return f"its JSON header is damaged ({err}); {_AGAIN}."
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):
        return f"its header is not a safetensors tensor table ({err}); it is not a weights file."
    if 8 + length + end > size:
        return (f"it is truncated: its header describes {8 + length + end} bytes and the file has {size}; "
                f"{_AGAIN}.")
    return f"it is damaged ({err}); {_AGAIN}."


def torch_problem(path: Path, err: BaseException) -> str:
    """What is wrong with a torch file that ``torch.load(weights_only=True)`` refused.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> p = Path(tempfile.mkdtemp()) / "w.pt"
        >>> _ = p.write_bytes(b"PK\\x03\\x04 cut")
        >>> torch_problem(p, RuntimeError("failed finding central directory"))[:36]
        'it is truncated or damaged: torch.sa'
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    text = str(err)
    unsafe = "weights only load failed" in text.lower()
    if size == 0:
        return f"it is empty (0 bytes): {_AGAIN}."
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return (f"it is truncated or damaged: torch.save writes a zip archive and this one has no end "
                    f"({size} bytes); {_AGAIN}.")
        return _refused(text) if unsafe else f"it is damaged ({type(err).__name__}: {text}); {_AGAIN}."
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # a pickle (old torch.save)
        if isinstance(err, EOFError) or any(w in text.lower() for w in ("truncated", "ran out of input", "eof")):
            return f"it is truncated (the pickle stops after {size} bytes); {_AGAIN}."
        return _refused(text) if unsafe else f"it is damaged ({type(err).__name__}: {text}); {_AGAIN}."
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < _MAX_HEADER:
        return "it is a safetensors file with a torch suffix; rename it to .safetensors."
    return (f"it is not a torch weights file (neither a torch.save archive nor a pickle; it starts with "
            f"{head[:8]!r}). Pass the .pt/.safetensors file a model's weights were saved to.")


def _refused(text: str) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", text)
    needs = f" (it pickles {found.group(1)})" if found else ""
    return ("refused for safety: it holds objects that torch.load(weights_only=True) will not rebuild"
            f"{needs}, and loading it otherwise would run code stored in the file. If you trust the file, "
            "re-save only its tensors once: sd = torch.load(path, weights_only=False); torch.save(sd.get("
            "'state_dict', sd), 'weights.pt') (or warmstart.core.checkpoints.save_weights(model.state_dict(), "
            "'weights.safetensors')).")
