"""Which ``checkpoint-N/`` folder of a ``transformers.Trainer`` run can be resumed from.

transformers writes a checkpoint folder in place, file by file: weights, optimizer, scheduler, RNG states, and
``trainer_state.json`` last. A kill during that save leaves a newest folder without (or with a truncated)
``trainer_state.json``, and transformers' own ``get_last_checkpoint`` still picks it: the Trainer then loads those
weights, finds no state and starts again at step 0, silently. Here a folder counts only once its
``trainer_state.json`` parses; the older, complete checkpoint is still on disk (transformers rotates old folders
only after the new one is saved).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

log = logging.getLogger("warmstart")

STATE_FILE = "trainer_state.json"  # transformers' TRAINER_STATE_NAME: written last by Trainer._save_checkpoint
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def incomplete_reason(checkpoint: str | Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (``None`` if its ``trainer_state.json`` is whole).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()) / "checkpoint-4"
        >>> folder.mkdir()
        >>> incomplete_reason(folder)
        'no trainer_state.json (the run stopped while saving it)'
        >>> _ = (folder / STATE_FILE).write_text('{"global_step": 4}')
        >>> incomplete_reason(folder) is None
        True
    """
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        return f"no {STATE_FILE} (the run stopped while saving it)"
    try:
        state = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return f"{STATE_FILE} is truncated or not JSON (the run stopped while writing it)"
    if not isinstance(state, dict) or "global_step" not in state:
        return f"{STATE_FILE} has no global_step"
    return None


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-N`` folder in ``output_dir`` that a Trainer can resume from, or ``None``.

    Newer folders a kill left half-written are skipped with a warning naming them. Pass the result to
    ``trainer.train(resume_from_checkpoint=...)`` instead of ``True`` (which trusts the newest folder).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> for step in (2, 4, 6):
        ...     (out / f"checkpoint-{step}").mkdir()
        ...     if step < 6:  # checkpoint-6: killed while saving
        ...         _ = (out / f"checkpoint-{step}" / STATE_FILE).write_text(f'{{"global_step": {step}}}')
        >>> last_complete_checkpoint(out).name
        'checkpoint-4'
        >>> last_complete_checkpoint(out / "missing") is None
        True
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in output_dir.iterdir()
                    if p.is_dir() and (m := _CHECKPOINT.match(p.name))), reverse=True)
    for _, folder in found:
        reason = incomplete_reason(folder)
        if reason is None:
            return folder
        log.warning("skipping %s: %s; resuming from the newest complete checkpoint before it", folder, reason)
    return None


def resume_path(resume: str | Path | bool | None, output_dir: str | Path) -> str | None:
    """What to hand ``Trainer.train(resume_from_checkpoint=...)``: ``True`` -> the newest complete checkpoint in
    ``output_dir``; a path -> itself, once checked complete; ``None``/``False`` -> ``None`` (a new run).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> (out / "checkpoint-3").mkdir()
        >>> resume_path(out / "checkpoint-3", out)
        Traceback (most recent call last):
        ...
        ValueError: cannot resume from .../checkpoint-3: no trainer_state.json (the run stopped while saving it); \
resume from an older checkpoint-N, or pass True for the newest complete one
        >>> resume_path(True, out)
        Traceback (most recent call last):
        ...
        ValueError: nothing to resume: no complete checkpoint-N folder in ...
    """
    if resume is None or resume is False:
        return None
    if resume is True:
        last = last_complete_checkpoint(output_dir)
        if last is None:
            raise ValueError(f"nothing to resume: no complete checkpoint-N folder in {output_dir}")
        return str(last)
    folder = Path(resume)
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot resume from {folder}: no such checkpoint folder")
    reason = incomplete_reason(folder)
    if reason is not None:
        raise ValueError(f"cannot resume from {folder}: {reason}; resume from an older checkpoint-N, or pass True "
                         "for the newest complete one")
    return str(folder)
