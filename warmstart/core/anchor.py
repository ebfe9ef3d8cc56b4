"""``anchor``: L2-SP, a pull of the pretrained weights towards their starting values while fine-tuning.

Li, Grandvalet and Davoine, "Explicit inductive bias for transfer learning with convolutional networks" (ICML 2018)
add ``alpha / 2 * ||w - w0||^2`` over the pretrained weights ``w`` (``w0``: their values when fine-tuning started)
to the loss, so with few labels the body moves only as far as the data insists. :class:`WeightAnchor` adds that
term's gradient, ``alpha * (w - w0)``, to each anchored parameter's gradient once per optimizer step (after
backward and gradient accumulation; multiplied by the AMP scale where the gradients are still scaled): the same
update as the loss term, without touching the user's loss. Lightning adds it before clipping, the YOLO trainer
before Ultralytics' unscale and clip, the HF callback after the Trainer's clipping (its only hook there). Only
parameters that have a gradient at that step are pulled, so frozen groups stay as they are.

What is anchored (:meth:`FinetuneController` picks it): every parameter of the non-head groups the plan ever
trains, except LoRA adapters (they have no pretrained value). The head is new, so it is not anchored.
The starting values are captured when training starts (after any weights loader ran) and are saved with the
run, so a resumed run pulls towards the same pretrained values, not the ones it was interrupted at.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .validation import check_finite_positive

# The file a front end keeps the starting values in when its checkpoint has no room for them (HF: output_dir,
# YOLO: next to last.pt): a resumed run's weights have moved, so only this file knows where they started.
ANCHOR_FILE = "warmstart_anchor.safetensors"


class WeightAnchor:
    """Adds ``strength * (w - w0)`` to the gradient of every anchored parameter ``w`` (L2-SP).

    Example:
        >>> lin = nn.Linear(2, 1)
        >>> anchor = WeightAnchor({"weight": lin.weight}, strength=0.5)
        >>> anchor.capture()
        >>> with torch.no_grad():
        ...     _ = lin.weight.add_(1.0)  # as if an optimizer step moved it
        >>> lin.weight.grad = torch.zeros_like(lin.weight)
        >>> anchor.add_gradients(), lin.weight.grad.tolist(), round(anchor.distance(), 4)
        (1, [[0.5, 0.5]], 1.4142)
    """

    def __init__(self, params: dict[str, nn.Parameter], strength: float) -> None:
        check_finite_positive("anchor", strength)
        self.params, self.strength = dict(params), float(strength)
        self.values: dict[str, torch.Tensor] = {}

    @property
    def captured(self) -> bool:
        """True once the starting values are known (captured here or loaded from a checkpoint)."""
        return bool(self.values) or not self.params

    def capture(self) -> None:
        """Remember the current values as the starting point (a no-op once captured)."""
        if not self.captured:
            self.values = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def add_gradients(self, scale: float = 1.0) -> int:
        """Add ``strength * (w - w0)`` to each anchored gradient that exists; returns how many were pulled.

        Call once per optimizer step, after backward, before the step. ``scale``: the AMP loss scale when the
        gradients are still scaled (the pull is scaled with them, so unscaling gives it back exactly).
        """
        if not self.captured:
            raise RuntimeError("WeightAnchor.add_gradients before capture(): the starting values are unknown")
        pulled = 0
        for name, p in self.params.items():
            if p.grad is None:
                continue
            start = self.values[name]
            if start.device != p.device or start.dtype != p.dtype:
                start = self.values[name] = start.to(device=p.device, dtype=p.dtype)
            p.grad.add_(p.detach() - start, alpha=self.strength * scale)
            pulled += 1
        return pulled

    @torch.no_grad()
    def distance(self) -> float:
        """``||w - w0||`` over every anchored parameter (how far fine-tuning moved the pretrained weights)."""
        if not self.captured:
            return 0.0
        total = sum(float((p.detach().float() - self.values[n].to(p.device).float()).pow(2).sum())
                    for n, p in self.params.items())
        return math.sqrt(total)

    def state_dict(self) -> dict[str, Any]:
        """The strength and the starting values (CPU tensors), for a checkpoint."""
        return {"strength": self.strength, "values": {n: v.detach().cpu() for n, v in self.values.items()}}

    def save(self, path: str | Path) -> Path:
        """Write the starting values to ``path`` (safetensors, atomic).

        Example:
            >>> import tempfile
            >>> lin = nn.Linear(2, 1)
            >>> anchor = WeightAnchor(dict(lin.named_parameters()), strength=0.1)
            >>> anchor.capture()
            >>> path = anchor.save(Path(tempfile.mkdtemp()) / ANCHOR_FILE)
            >>> again = WeightAnchor(dict(lin.named_parameters()), strength=0.1)
            >>> again.load(path, "written when the run started")
            >>> all(torch.equal(again.values[n], anchor.values[n]) for n in anchor.values)
            True
            >>> again.load(path.with_name("gone.safetensors"), "written when the run started")
            Traceback (most recent call last):
            ...
            ValueError: cannot resume the plan's anchor (L2-SP): its starting weights .../gone.safetensors are not \
there (written when the run started); start a new run
        """
        from .checkpoints import save_weights

        return save_weights(self.state_dict()["values"], path)

    def load(self, path: str | Path, written: str) -> None:
        """Restore the starting values :meth:`save` wrote to ``path``; ``written`` says where the front end puts
        that file (for the error when it is missing)."""
        from .checkpoints import read_weights

        if not Path(path).is_file():
            raise ValueError(f"cannot resume the plan's anchor (L2-SP): its starting weights {path} are not there "
                             f"({written}); start a new run")
        self.load_state_dict({"values": read_weights(path)})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the starting values of an interrupted run; other parameter names or shapes raise."""
        values = dict(state.get("values") or {})
        if set(values) != set(self.params):
            missing, extra = sorted(set(self.params) - set(values)), sorted(set(values) - set(self.params))
            raise ValueError(f"the checkpoint anchors other parameters than this model: missing {missing[:3]}, "
                             f"unexpected {extra[:3]}; resume with the same model and plan")
        for name, value in values.items():
            if tuple(value.shape) != tuple(self.params[name].shape):
                raise ValueError(f"the checkpoint's anchor for {name!r} has shape {tuple(value.shape)}, the model's "
                                 f"parameter {tuple(self.params[name].shape)}")
        self.values = {n: v.to(device=self.params[n].device, dtype=self.params[n].dtype) for n, v in values.items()}
