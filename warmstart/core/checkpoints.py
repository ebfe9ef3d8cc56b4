"""Save, export and load backbone weights in the native model's own key layout.

An export must be usable without warmstart (DESIGN rule 6): ``backbone.safetensors`` / ``backbone.pt`` hold a
plain state dict keyed exactly like the library's model (``layer1.0.conv1.weight`` for torchvision,
``model.0.conv.weight`` for a YOLO DetectionModel), so ``resnet18().load_state_dict(sd, strict=False)`` works.
Loading the other way (:func:`load_backbone_weights`) finds where the backbone lives inside a bigger model
(``backbone.``, ``model.``, ``vit.``) and refuses silent partial loads (DESIGN rule 8).

Writes are atomic: a crash mid-write never leaves a truncated file where a good one is expected.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .backbones import Backbone, build_backbone

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# Keys that may stay at their initial values in the target: the task head a fine-tune trains from scratch.
_HEAD_WORDS = ("fc", "classifier", "head", "heads", "logits", "pooler")


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` transferred.

    ``matched``: target keys that received a tensor. ``missing``: target keys (under ``prefix``) left as they
    were. ``unexpected``: export keys with no counterpart in the target. ``total_backbone``: tensors in the export.

    Example:
        >>> r = LoadReport(matched=["a", "b"], missing=["fc.weight"], unexpected=[], total_backbone=2)
        >>> r.summary()
        'transferred 2/2 backbone tensors (1 missing in model: fc.weight; 0 unexpected)'
    """

    matched: list[str]
    missing: list[str]
    unexpected: list[str]
    total_backbone: int
    prefix: str = ""
    source_prefix: str = ""
    mismatched: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs: how many tensors transferred, and what was left out.

        Example:
            >>> LoadReport(["w"], [], [], 1, prefix="backbone.").summary()
            "transferred 1/1 backbone tensors into 'backbone.' (0 missing in model; 0 unexpected)"
        """
        where = f" into {self.prefix!r}" if self.prefix else ""
        missing = f"{len(self.missing)} missing in model" + (f": {_preview(self.missing)}" if self.missing else "")
        text = f"transferred {len(self.matched)}/{self.total_backbone} backbone tensors{where} ({missing}; " \
               f"{len(self.unexpected)} unexpected"
        if self.mismatched:
            text += f"; {len(self.mismatched)} skipped for shape: {_preview(self.mismatched)}"
        return text + ")"


def save_weights(state_dict: Mapping[str, Tensor], path: str | Path, *, metadata: dict[str, str] | None = None) -> Path:
    """Write a state dict atomically to ``.safetensors`` (preferred) or ``.pt``, chosen by the suffix.

    Tensors are moved to CPU and made contiguous; tensors sharing storage (tied weights) are cloned, since
    safetensors refuses shared memory. ``metadata`` (str -> str) goes into the safetensors header.

    Example:
        >>> import tempfile, torch
        >>> d = tempfile.mkdtemp()
        >>> p = save_weights({"w": torch.ones(2)}, f"{d}/w.safetensors")
        >>> read_weights(p)["w"].tolist()
        [1.0, 1.0]
    """
    path = Path(path)
    tensors = _plain_tensors(state_dict)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta or None))
    elif path.suffix in (".pt", ".pth", ".bin"):
        atomic_write(path, lambda tmp: torch.save(tensors, tmp))
    else:
        raise ValueError(f"cannot save weights to {path}: use a '.safetensors' (recommended) or '.pt' file name.")
    return path


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``.pt``/``.pth``/``.bin``/``.ckpt``).

    Torch files are only read with ``torch.load(weights_only=True)`` (no code from the file runs). Wrappers are
    unwrapped: a Lightning checkpoint's ``state_dict``, ``{"model": state_dict}``, ``{"model_state_dict": ...}``.
    A directory means the warmstart export inside it (``backbone.safetensors``, else ``backbone.pt``).

    Example:
        >>> import tempfile, torch
        >>> p = f"{tempfile.mkdtemp()}/ckpt.pt"
        >>> torch.save({"epoch": 3, "state_dict": {"layer.w": torch.zeros(1)}}, p)
        >>> list(read_weights(p))
        ['layer.w']
    """
    path = _resolve_weights_path(Path(path))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path} could not be read with torch.load(weights_only=True) ({type(err).__name__}: {err}). warmstart "
            "never unpickles arbitrary objects. Save a plain state dict instead: "
            "torch.save(model.state_dict(), 'weights.pt') or warmstart.core.checkpoints.save_weights(...)."
        ) from err
    return _unwrap(obj, path)


def export_backbone(backbone: Backbone | nn.Module, out_dir: str | Path) -> dict[str, Path]:
    """Write ``backbone.safetensors``, ``backbone.pt`` (same state dict) and ``backbone.json`` (spec, family, dims).

    Hugging Face backbones also get the model's ``config.json``. Returns the written paths by kind.

    The state dict is ``backbone.native_state_dict()``: it loads into the library's own model class with
    ``load_state_dict(sd, strict=False)``, only the classifier / detection head missing.

    Example:
        >>> import tempfile
        >>> from warmstart.core.backbones import build_backbone
        >>> files = export_backbone(build_backbone("torchvision/resnet18", image_size=32), tempfile.mkdtemp())
        >>> sorted(files)
        ['json', 'pt', 'safetensors']
    """
    if not isinstance(backbone, Backbone):
        backbone = build_backbone(backbone)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = backbone.native_state_dict()
    meta = {
        "format": "warmstart-backbone/1",
        "spec": backbone.spec,
        "family": backbone.family,
        "feature_dim": backbone.feature_dim,
        "image_size": backbone.image_size,
        "num_tensors": len(state),
        "info": backbone.info,
    }
    files = {"safetensors": out / "backbone.safetensors", "pt": out / "backbone.pt", "json": out / "backbone.json"}
    header = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in meta.items() if k != "info"}
    save_weights(state, files["safetensors"], metadata=header)
    save_weights(state, files["pt"])
    text = json.dumps(meta, indent=2, default=str)
    atomic_write(files["json"], lambda tmp: Path(tmp).write_text(text))
    if "hf_config" in backbone.info:
        # transformers reads this natively: AutoConfig.from_pretrained(out_dir) rebuilds the architecture.
        files["config"] = out / "config.json"
        config = json.dumps(backbone.info["hf_config"], indent=2, default=str)
        atomic_write(files["config"], lambda tmp: Path(tmp).write_text(config))
    return files


def load_backbone_weights(
    model: nn.Module,
    path_or_state: str | Path | Mapping[str, Tensor],
    *,
    min_match: float = 0.9,
    prefix: str | None = None,
    strict_shapes: bool = True,
) -> LoadReport:
    """Load exported backbone weights into ``model`` (in place) and report what transferred.

    ``model`` is the native model (``resnet18()``, a timm model, a YOLO ``DetectionModel``), a :class:`Backbone`,
    or any model holding the native backbone under a prefix (``self.backbone = resnet18()`` -> ``backbone.``),
    which is found automatically unless ``prefix`` is given. A checkpoint whose keys carry an extra prefix
    (a Lightning ``.ckpt`` with ``backbone.model.``) is matched the same way.

    Raises ValueError when a tensor's shape differs (unless ``strict_shapes=False``: then it is skipped and
    listed), when fewer than ``min_match`` of the export's tensors find a place in the model, or when more than
    ``1 - min_match`` of the model's non-head tensors under the prefix get nothing from the export.

    Example:
        >>> import torchvision
        >>> from warmstart.core.backbones import build_backbone
        >>> sd = build_backbone("torchvision/resnet18", image_size=32).native_state_dict()
        >>> report = load_backbone_weights(torchvision.models.resnet18(num_classes=10), sd)
        >>> report.missing, len(report.matched) == report.total_backbone
        (['fc.weight', 'fc.bias'], True)
    """
    if not 0.0 <= min_match <= 1.0:
        raise ValueError(f"min_match must be a fraction in [0, 1], got {min_match}")
    source = read_weights(path_or_state) if isinstance(path_or_state, (str, Path)) else dict(path_or_state)
    if not source:
        raise ValueError("the weights to load are empty (no tensors).")
    target_module = model.model if isinstance(model, Backbone) else model
    target = target_module.state_dict()
    if prefix:
        prefix = prefix if prefix.endswith(".") else prefix + "."
    add, strip = _find_prefixes(list(source), list(target), prefix)

    backbone_keys = [k for k in source if k.startswith(strip)]
    to_load: dict[str, Tensor] = {}
    matched, unexpected, mismatched = [], [], []
    for key in backbone_keys:
        name = add + key[len(strip):]
        if name not in target:
            unexpected.append(key)
        elif tuple(target[name].shape) != tuple(source[key].shape):
            mismatched.append(f"{name}: export {tuple(source[key].shape)} vs model {tuple(target[name].shape)}")
        else:
            to_load[name] = source[key]
            matched.append(name)
    if mismatched and strict_shapes:
        raise ValueError(
            f"{len(mismatched)} backbone tensors have a different shape in the model than in the export, e.g. "
            f"{'; '.join(mismatched[:3])}. The export comes from a different architecture or size (e.g. yolov8s vs "
            "yolov8n, resnet50 vs resnet18): build the model from the same spec/yaml the backbone was trained with."
        )
    report = LoadReport(matched=matched, missing=[], unexpected=unexpected, total_backbone=len(backbone_keys),
                        prefix=add, source_prefix=strip, mismatched=mismatched)
    scope = [k for k in target if k.startswith(add)]
    report.missing = [k for k in scope if k not in to_load]
    if len(matched) < min_match * len(backbone_keys):
        raise ValueError(
            f"only {len(matched)} of the export's {len(backbone_keys)} backbone tensors match the model "
            f"(need {min_match:.0%}). Export keys look like {_preview(backbone_keys)}; model keys look like "
            f"{_preview(list(target))}. Load into the same architecture, or pass prefix='<where the backbone "
            "lives in your model>.'."
        )
    not_head = _non_head_missing(target_module, report.missing, add)
    body = len([k for k in scope if k not in set(report.missing) - set(not_head)])
    if body and len(not_head) > (1.0 - min_match) * body:
        raise ValueError(
            f"the export covers too little of the model: {len(not_head)} of its {body} non-head tensors"
            f"{' under ' + repr(add) if add else ''} would keep their initial values ({_preview(not_head)}). "
            "The export is from a smaller or different architecture; build the model from the export's spec."
        )
    target_module.load_state_dict(to_load, strict=False)
    return report


# ------------------------------------------------------------------------------------------------- helpers


def _preview(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def _plain_tensors(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor; "
                             "save only model.state_dict()-style tensor mappings.")
        t = value.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            t = t.clone()  # tied / shared storage: safetensors stores each tensor's own copy
        elif t.numel():
            seen.add(ptr)
        out[str(key)] = t
    return out


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then ``os.replace`` it into place.

    ``os.replace`` is atomic on POSIX and Windows: readers see the old file or the complete new one, never
    a partial write; if ``write`` raises, the temporary file is removed and ``path`` is untouched.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> p = atomic_write(Path(tempfile.mkdtemp()) / "a.txt", lambda tmp: tmp.write_text("done"))
        >>> p.read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _resolve_weights_path(path: Path) -> Path:
    if path.is_dir():
        for name in ("backbone.safetensors", "backbone.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} is a directory without backbone.safetensors or backbone.pt; "
                                "pass the weights file itself or a warmstart export directory.")
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist. Pass the path of a .safetensors or .pt file "
                                "(e.g. <pretrain out>/exported/backbone.safetensors).")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"{path}: unsupported weights file type {path.suffix!r}; expected one of {WEIGHT_SUFFIXES}.")
    return path


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    for _ in range(4):  # {"state_dict": {...}}, {"model": {"state_dict": ...}}: a few levels at most
        if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in ("state_dict", "model_state_dict", "model", "module") if
                      isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors), nor one under "
                     "'state_dict' / 'model' / 'model_state_dict'.")


def _suffix_candidates(keys: list[str], others: set[str]) -> Counter:
    """Prefixes p with p + o == k for k in keys, o in others, counted by how many keys they explain."""
    found: Counter = Counter()
    for key in keys:
        pos = key.find(".")
        while pos != -1:
            if key[pos + 1:] in others:
                found[key[: pos + 1]] += 1
            pos = key.find(".", pos + 1)
    return found


def _find_prefixes(source: list[str], target: list[str], prefix: str | None) -> tuple[str, str]:
    """Best (prefix to add to export keys, prefix to strip from them) by the number of names that match."""
    src = set(source)
    adds = [prefix] if prefix is not None else [""] + [p for p, _ in _suffix_candidates(target, src).most_common(5)]
    best = ("", "")
    best_score = -1
    for add in adds:
        view = {t[len(add):] for t in target if t.startswith(add)}
        strips = [""] + [p for p, _ in _suffix_candidates(source, view).most_common(5)]
        for strip in strips:
            score = sum(1 for s in source if s.startswith(strip) and s[len(strip):] in view)
            # Ties keep the earlier candidate: "" (no prefix) is tried first, then by keys explained.
            if score > best_score:
                best, best_score = (add, strip), score
    return best


def _non_head_missing(model: nn.Module, missing: list[str], prefix: str) -> list[str]:
    """Missing keys that are not a task head/neck (which a fine-tune legitimately trains from scratch)."""
    if not missing:
        return []
    sub = model
    if prefix:
        try:
            sub = model.get_submodule(prefix.rstrip("."))
        except AttributeError:
            sub = model
    head_modules: list[str] = []
    try:
        from .layers import layer_groups

        for g in layer_groups(sub):
            if g.role in ("head", "neck"):
                head_modules += [m + "." for m in g.module_names] + list(g.param_names)
    except Exception:  # layer map is a hint here; the name rule below still applies
        head_modules = []
    out = []
    for key in missing:
        rel = key[len(prefix):] if sub is not model else key
        parts = set(rel.split(".")[:-1])
        if parts & set(_HEAD_WORDS) or any(rel == h or rel.startswith(h) for h in head_modules if h.endswith(".")):
            continue
        if rel in head_modules:
            continue
        out.append(key)
    return out
