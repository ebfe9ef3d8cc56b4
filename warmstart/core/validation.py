"""Argument checks shared by the core functions and every front end (ARCHITECTURE.md rule 8: clear errors, early).

Without them a NaN learning rate turns the weights into NaN after one step, ``alpha=0`` leaves LoRA adapters
frozen in place, and an empty model fails with an ``IndexError`` deep inside the layer map. Each check raises a
``ValueError`` that names the argument, the bad value and the valid range; it never converts or returns the
value, so valid input behaves exactly as before.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import nn


def _as_real(name: str, value: Any, valid: str) -> float:
    """``value`` as a float for comparison, or a ``ValueError`` if it is not a real number (bools and strings)."""
    # bool is an int subclass: lr=True is a typo, not a learning rate of 1.
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype.is_floating_point:
        return float(value)  # torch optimizers accept a 0-d tensor lr (capturable/fused): keep allowing it
    raise ValueError(f"{name} must be a real number {valid}, got {value!r} ({type(value).__name__})")


def check_range(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, hint: str = "") -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number between ``low`` and ``high``.

    ``low_open`` / ``high_open`` exclude the bound itself; ``None`` means unbounded on that side. ``hint``
    (e.g. the typical values) is appended to the message.

    Example:
        >>> check_range("layer_decay", 0.5, 0, 1, low_open=True)
        >>> check_range("dropout", 1.0, 0, 1, high_open=True)
        Traceback (most recent call last):
        ...
        ValueError: dropout must be in [0, 1), got 1.0
    """
    if low is not None and high is not None:
        valid = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        valid = f"{'>' if low_open else '>='} {low:g} and finite"
    elif high is not None:
        valid = f"{'<' if high_open else '<='} {high:g} and finite"
    else:
        valid = "finite"
    if hint:
        valid += f" ({hint})"
    x = _as_real(name, value, valid)
    too_low = low is not None and (x <= low if low_open else x < low)
    too_high = high is not None and (x >= high if high_open else x > high)
    # NaN fails every comparison, so it has to be caught explicitly or it would slip through both bounds.
    if not math.isfinite(x) or too_low or too_high:
        raise ValueError(f"{name} must be {valid}, got {value!r}")


def check_finite_positive(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0 (learning rates, LoRA alpha).

    Example:
        >>> check_finite_positive("lr", 1e-3)
        >>> check_finite_positive("lr", float("nan"))
        Traceback (most recent call last):
        ...
        ValueError: lr must be > 0 and finite, got nan
    """
    check_range(name, value, 0, low_open=True)


def check_non_negative(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number >= 0 (weight decay, lr ratios).

    Example:
        >>> check_non_negative("weight_decay", 0.0)
        >>> check_non_negative("weight_decay", -1)
        Traceback (most recent call last):
        ...
        ValueError: weight_decay must be >= 0 and finite, got -1
    """
    check_range(name, value, 0)


def check_positive_int(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer >= 1 (LoRA rank).

    Example:
        >>> check_positive_int("r", 4)
        >>> check_positive_int("r", 2.5)
        Traceback (most recent call last):
        ...
        ValueError: r must be >= 1 and an integer, got 2.5
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be >= 1 and an integer, got {value!r}")


def check_has_parameters(model: nn.Module, what: str) -> None:
    """Raise ``ValueError`` when ``model`` has no parameters, so there is nothing for ``what`` to act on.

    Example:
        >>> check_has_parameters(nn.Linear(2, 2), "LoRA")
        >>> check_has_parameters(nn.Sequential(), "LoRA")
        Traceback (most recent call last):
        ...
        ValueError: model (Sequential) has no parameters, so LoRA has nothing to act on; ...
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise ValueError(f"model ({type(model).__name__}) has no parameters, so {what} has nothing to act on; "
                         "pass the module that holds the layers")
