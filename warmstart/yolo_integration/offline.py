"""Keep ``YOLO.train`` off the network (ARCHITECTURE.md rule 9), without touching the user's Ultralytics settings file.

What reaches the network in Ultralytics 8.4 during a training run, and what we do about it:

- ``Model.train`` -> ``checks.check_pip_update_available()`` asks PyPI for the latest version (only when
  ``ONLINE``). Replaced by a no-op for the run.
- ``check_det_dataset`` -> ``check_font("Arial.ttf")`` and the plotting ``Annotator`` -> ``check_font`` download
  fonts from GitHub assets when they are not in the user config dir. Replaced by a local-only lookup; PIL's default
  font is used when none is found.
- ``BaseTrainer._setup_train`` -> ``check_amp`` downloads ``yolo26n.pt`` on CUDA when ``amp=True``. Replaced by a
  version that keeps AMP on (Ultralytics' own offline answer) without the download when the file is missing.
- Anonymous usage events (``utils.events``, ``SETTINGS["sync"]``): disabled for the run.
- Datasets: only a local ``data.yaml`` with existing image folders is offline; a dataset name like ``coco8.yaml``
  triggers a download, which we do not intercept (pass your own data).

``YOLO_OFFLINE=1`` set *before* importing ultralytics also makes ``ultralytics.utils.ONLINE`` False, which turns
off the update check and the events, but not the font or AMP downloads; this guard covers all four.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

from .._optional import require

require("ultralytics")


@functools.lru_cache
def _local_font(font: str = "Arial.ttf") -> Path | None:
    """``check_font`` without the download: the user config dir, then matplotlib's cached font list."""
    from matplotlib import font_manager
    from ultralytics.utils import USER_CONFIG_DIR

    name = Path(font).name
    if (USER_CONFIG_DIR / name).exists():
        return USER_CONFIG_DIR / name
    matches = [f.fname for f in font_manager.fontManager.ttflist if font in f.fname and Path(f.fname).exists()]
    return Path(matches[0]) if matches else None


def _offline_check_amp(model, *args, **kwargs) -> bool:
    from ultralytics.utils import LOGGER, WEIGHTS_DIR
    from ultralytics.utils.checks import check_amp

    device = next(model.parameters()).device
    if device.type == "cuda" and not (WEIGHTS_DIR / "yolo26n.pt").is_file():
        LOGGER.warning("warmstart: AMP check skipped (it would download yolo26n.pt); training with amp=True. "
                       "Pass amp=False if you see NaN losses.")
        return True
    return check_amp(model, *args, **kwargs)


@contextlib.contextmanager
def offline_guard() -> Iterator[None]:
    """Within this block, Ultralytics training makes no network request of its own.

    Example:
        >>> with offline_guard():
        ...     import ultralytics.utils.checks as checks
        ...     checks.check_pip_update_available()
        False
    """
    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as trainer_mod
    import ultralytics.utils.checks as checks
    import ultralytics.utils.events as events
    import ultralytics.utils.plotting as plotting

    patches = [
        (checks, "check_pip_update_available", lambda: False),
        (data_utils, "check_font", _local_font),
        (plotting, "check_font", _local_font),
        (trainer_mod, "check_amp", _offline_check_amp),
    ]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    was_enabled = events.events.enabled
    try:
        for mod, name, value in patches:
            setattr(mod, name, value)
        events.events.enabled = False
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)
        events.events.enabled = was_enabled
