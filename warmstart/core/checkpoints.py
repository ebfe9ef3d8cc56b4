"""Save, export and load backbone weights in the native model's own key layout.

An export must be usable without warmstart (ARCHITECTURE.md rule 6): ``backbone.safetensors`` / ``backbone.pt``
hold a plain state dict keyed exactly like the library's model (``layer1.0.conv1.weight`` for torchvision,
``model.0.conv.weight`` for a YOLO DetectionModel), so ``resnet18().load_state_dict(sd, strict=False)`` works.

Every weights read in warmstart goes through :func:`read_weights` (a damaged, truncated or unsafe file is a
``ValueError`` naming the file and the problem) and every load through :func:`load_backbone_weights`, which
matches keys whatever wrapped the model (peft LoRA, ``PeftModel``, DDP, ``torch.compile``, a Lightning
``backbone.`` attribute; see :mod:`warmstart.core.weight_keys`) and refuses partial loads unless they are asked
for (ARCHITECTURE.md rule 8).

Writes are atomic: a crash mid-write never leaves a truncated file where a good one is expected.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import secrets
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import weight_files
from .backbones import _INPUT_NORMALIZE, IMAGENET_NORMALIZE, Backbone, build_backbone
from .weight_keys import (
    canonical_key,
    canonical_names,
    check_patterns,
    describe_by_group,
    find_prefixes,
    head_keys,
    is_adapter_key,
    key_groups,
    matches_any,
)

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
EXPORT_FILES = ("backbone.safetensors", "backbone.pt")  # what an export folder resolves to, in this order
log = logging.getLogger(__name__)


class WeightsNotFoundError(FileNotFoundError, ValueError):
    """A weights path that does not exist. Also a ValueError: the front ends raised that for it before."""


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` transferred.

    ``matched``: target keys that received a tensor. ``missing``: target keys (under ``prefix``) left as they
    were. ``unexpected``: export keys with no counterpart in the target. ``total_backbone``: tensors in the export.
    ``adapters``: LoRA adapter tensors of the model the export has nothing for (new, like a task head).
    ``normalize``: the input mean/std the export was trained with (:func:`export_normalize`), or ``None`` when the
    weights came without a ``backbone.json`` or its family takes pixels / 255 only (Ultralytics). The front ends
    do not normalise your data: feed fine-tuning images normalised with these numbers.

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
    adapters: list[str] = field(default_factory=list)
    normalize: dict[str, list[float]] | None = None

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
        if self.adapters:
            text += f"; {len(self.adapters)} LoRA adapter tensors start new"
        return text + ")"

    def normalize_warning(self) -> str | None:
        """A line for a fine-tuning front end to log when the export's inputs were not ImageNet-normalised.

        The front ends never see the user's transforms, so a ``channels=N`` export fed ImageNet-normalised (or
        raw) images would fine-tune on the wrong scale without any error. ``None`` when nothing is recorded or
        the statistics are ImageNet's (what torchvision, timm and Hugging Face recipes already use).

        Example:
            >>> LoadReport([], [], [], 0, normalize={"mean": [0.3], "std": [0.2]}).normalize_warning()[:46]
            'the export was pretrained on inputs normalised'
            >>> LoadReport([], [], [], 0).normalize_warning() is None
            True
        """
        if self.normalize is None or self.normalize == IMAGENET_NORMALIZE:
            return None
        return (f"the export was pretrained on inputs normalised with mean={self.normalize.get('mean')}, "
                f"std={self.normalize.get('std')} (its backbone.json), not ImageNet's; warmstart does not "
                "normalise your data: use these numbers in your transforms (report.normalize)")


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


def resolve_weights_path(path: str | os.PathLike) -> Path:
    """The weights file ``path`` names: the file itself, or an export folder's ``backbone.safetensors`` / ``.pt``.

    Raises :class:`WeightsNotFoundError` (a FileNotFoundError) naming the path when nothing is there, and a
    ValueError for a file type warmstart does not read.

    Example:
        >>> import tempfile, torch
        >>> d = tempfile.mkdtemp()
        >>> resolve_weights_path(save_weights({"w": torch.ones(1)}, f"{d}/backbone.pt")) == resolve_weights_path(d)
        True
    """
    path = Path(path)
    if path.is_dir():
        for name in EXPORT_FILES:
            if (path / name).is_file():
                return path / name
        raise WeightsNotFoundError(f"{path} is a folder without {' or '.join(EXPORT_FILES)}; pass the weights "
                                   "file itself or a warmstart export folder.")
    if not path.is_file():
        kind = "file" if path.suffix in WEIGHT_SUFFIXES else "folder" if not path.suffix else "path"
        raise WeightsNotFoundError(
            f"weights {kind} {path} does not exist. Pass a .safetensors/.pt file or the export folder written by "
            "`warmstart pretrain` (e.g. <out>/exported or <out>/exported/backbone.safetensors).")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"{path}: unsupported weights file type {path.suffix!r}; expected one of {WEIGHT_SUFFIXES}.")
    return path


def export_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``backbone.json`` that :func:`export_backbone` wrote next to the weights ``path`` names (``{}`` if none).

    ``path`` is the weights file or the export folder. A missing, unreadable or non-JSON ``backbone.json`` gives
    ``{}`` (weights from elsewhere carry none); a missing weights path raises :class:`WeightsNotFoundError`.

    Example:
        >>> import tempfile
        >>> from warmstart.core.backbones import build_backbone
        >>> d = tempfile.mkdtemp()
        >>> _ = export_backbone(build_backbone("torchvision/resnet18", image_size=32), d)
        >>> export_metadata(d)["spec"]
        'torchvision/resnet18'
    """
    meta = resolve_weights_path(path).parent / "backbone.json"
    try:
        value = json.loads(meta.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def export_normalize(path: str | os.PathLike) -> dict[str, list[float]] | None:
    """Input ``{"mean", "std"}`` the export at ``path`` was pretrained with: what fine-tuning must feed it.

    Read from the export's ``backbone.json``: its recorded statistics (``info.normalize``: per-band statistics of
    a ``channels=N`` run, or a model's own, like EfficientNet-Lite's 0.5 / 0.5), else its family's default
    (ImageNet's for torchvision, timm and Hugging Face). ``None`` when there is no ``backbone.json`` (nothing
    recorded: weights from elsewhere), when a non-RGB export recorded no statistics, or when the family takes
    pixels / 255 only (Ultralytics).

    Example:
        >>> import tempfile
        >>> from warmstart.core.backbones import build_backbone
        >>> d = tempfile.mkdtemp()
        >>> _ = export_backbone(build_backbone("torchvision/resnet18", image_size=32), d)
        >>> export_normalize(d)["std"]
        [0.229, 0.224, 0.225]
    """
    meta = export_metadata(path)
    if not meta:
        return None
    info = meta.get("info") or {}
    if "normalize" in info:
        return info["normalize"]
    if int(info.get("in_channels", 3)) != 3:  # ImageNet's RGB statistics mean nothing for N bands
        return None
    return _INPUT_NORMALIZE.get(str(meta.get("family")), IMAGENET_NORMALIZE)


def read_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``.pt``/``.pth``/``.bin``/``.ckpt``).

    Torch files are only read with ``torch.load(weights_only=True)`` (no code from the file runs). Wrappers are
    unwrapped: a Lightning checkpoint's ``state_dict``, ``{"model": state_dict}``, ``{"model_state_dict": ...}``.
    A directory means the warmstart export inside it (``backbone.safetensors``, else ``backbone.pt``). A file
    that is truncated, not a weights file, or would need code to unpickle raises a ValueError naming the file.

    Example:
        >>> import tempfile, torch
        >>> p = f"{tempfile.mkdtemp()}/ckpt.pt"
        >>> torch.save({"epoch": 3, "state_dict": {"layer.w": torch.zeros(1)}}, p)
        >>> list(read_weights(p))
        ['layer.w']
    """
    path = resolve_weights_path(path)
    if path.suffix == ".safetensors":
        return weight_files.read_safetensors(path)
    return _unwrap(weight_files.read_torch(path), path)


def export_backbone(backbone: Backbone | nn.Module, out_dir: str | Path) -> dict[str, Path]:
    """Write ``backbone.safetensors``, ``backbone.pt`` (same state dict) and ``backbone.json`` (spec, family, dims).

    Hugging Face backbones also get the model's ``config.json``. Returns the written paths by kind.

    The state dict is ``backbone.native_state_dict()``: it loads into the library's own model class with
    ``load_state_dict(sd, strict=False)``, only the classifier / detection head missing. A backbone with LoRA
    adapters is exported merged, and wrapper names (``_orig_mod.``) are dropped, so that stays true.

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
    state = _native_export_state(backbone)
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
    path_or_state: str | os.PathLike | Mapping[str, Tensor],
    *,
    min_match: float = 1.0,
    prefix: str | None = None,
    strict_shapes: bool = True,
    allow_missing: str | Sequence[str] | None = None,
) -> LoadReport:
    """Load exported backbone weights into ``model`` (in place) and report what transferred.

    ``model`` is the native model (``resnet18()``, a timm model, a YOLO ``DetectionModel``), a :class:`Backbone`,
    or any model holding the native backbone under a prefix (``self.backbone = resnet18()`` -> ``backbone.``),
    which is found automatically unless ``prefix`` is given. A checkpoint whose keys carry an extra prefix
    (a Lightning ``.ckpt`` with ``backbone.model.``) is matched the same way, and wrapper names on either side
    (peft ``base_layer.`` / ``base_model.model.``, DDP ``module.``, ``torch.compile`` ``_orig_mod.``) are ignored.

    The load is complete or it raises: every export tensor must find its place, and every model tensor under
    the prefix must receive one, except the task head/neck (``fc``, ``classifier``, a YOLO neck and Detect head:
    layer groups the export supplies nothing to) and new LoRA adapters. Partial loads are explicit:

    - ``allow_missing``: fnmatch patterns or regexes of tensors allowed to go without a counterpart (model
      tensors keeping their initial values, or export tensors with no place in the model);
    - ``min_match``: the tolerance for a transfer across architectures, the fraction of export tensors that must
      find a place and of the model's non-head tensors that must receive one (1.0: all).

    What a tolerated partial load leaves out is logged at WARNING, grouped by layer group. A shape difference
    raises unless ``strict_shapes=False`` (then the tensor is skipped and listed in ``mismatched``).

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
    patterns = check_patterns(allow_missing)
    is_path = isinstance(path_or_state, (str, os.PathLike))
    where = str(path_or_state) if is_path else "the given state dict"
    source = read_weights(path_or_state) if is_path else dict(path_or_state)
    if not source:
        raise ValueError(f"the weights to load are empty: {where} holds no tensors.")
    target_module = model.model if isinstance(model, Backbone) else model
    target = target_module.state_dict()
    src, tgt = canonical_names(source), canonical_names(target)
    if prefix:
        prefix = canonical_key(prefix if prefix.endswith(".") else prefix + ".")
    add, strip = find_prefixes(list(src), list(tgt), prefix)

    def allowed(*names: str) -> bool:
        return matches_any(names[0], patterns) or any(matches_any(n, patterns) for n in names[1:])

    backbone_keys = [k for k in src if k.startswith(strip)]
    to_load: dict[str, Tensor] = {}
    loaded: set[str] = set()  # canonical target names
    matched, unexpected, mismatched, skipped = [], [], [], set()
    for key in backbone_keys:
        name, value = add + key[len(strip):], source[src[key][0]]
        if name not in tgt:
            unexpected.append(src[key][0])
        elif tuple(target[tgt[name][0]].shape) != tuple(value.shape):
            shape = tuple(target[tgt[name][0]].shape)
            mismatched.append(f"{tgt[name][0]}: export {tuple(value.shape)} vs model {shape}")
            skipped.add(name)
        else:
            to_load.update(dict.fromkeys(tgt[name], value))  # peft keeps two copies of a saved head: fill both
            matched.append(tgt[name][0])
            loaded.add(name)
    if mismatched and strict_shapes:
        raise ValueError(
            f"{len(mismatched)} backbone tensors have a different shape in the model than in {where}, e.g. "
            f"{'; '.join(mismatched[:3])}. The export comes from a different architecture or size (e.g. yolov8s vs "
            "yolov8n, resnet50 vs resnet18): build the model from the same spec/yaml the backbone was trained with."
        )
    stray_adapters = [k for k in unexpected if is_adapter_key(k) and not allowed(k, canonical_key(k))]
    if stray_adapters:
        raise ValueError(
            f"{where} holds {len(stray_adapters)} unmerged LoRA adapter tensors ({_preview(stray_adapters)}) and "
            "the model has no LoRA layers for them: loading only the base weights would silently drop what the "
            "adapters learned. Merge before saving (warmstart.core.merge_lora(model); export_backbone does it), "
            "or apply_lora(model, ...) with the same targets before loading."
        )
    unplaced = [k for k in unexpected if not allowed(k, canonical_key(k))]
    if len(backbone_keys) - len(unplaced) < min_match * len(backbone_keys):
        raise ValueError(
            f"only {len(matched)} of the export's {len(backbone_keys)} backbone tensors in {where} match the model "
            f"(need {min_match:.0%}); no place for {_preview(unplaced)}. Model keys look like "
            f"{_preview(list(target))}. Load into the same architecture, pass prefix='<where the backbone lives in "
            "your model>.', allow_missing=[patterns] for tensors you mean to drop, or min_match=<fraction> for a "
            "transfer across architectures."
        )

    scope = [n for n in tgt if n.startswith(add) and not is_adapter_key(n)]
    missing = [n for n in scope if n not in loaded]
    groups = key_groups(target_module, scope, add) if missing else {}
    head = head_keys(missing, loaded, groups, add, by_role=not isinstance(model, Backbone))
    body = len(scope) - len(head)
    gaps = [n for n in missing if n not in head and n not in skipped]  # skipped: strict_shapes=False asked for it
    refused = [n for n in gaps if not allowed(n, n[len(add):], tgt[n][0])]
    if body and len(refused) > (1.0 - min_match) * body:
        raise ValueError(
            f"the export covers too little of the model: {len(refused)} of its {body} non-head tensors"
            f"{' under ' + repr(add) if add else ''} would keep their initial values after loading {where}. "
            f"By layer group: {describe_by_group(refused, groups)}. Load an export of the same architecture, or "
            f"ask for a partial load: allow_missing={[n[len(add):] for n in refused[:3]]!r} (patterns like "
            "'layer4.*' work), or min_match=<fraction> for a transfer across architectures."
        )
    target_module.load_state_dict(to_load, strict=False)
    if gaps or unexpected or (mismatched and not strict_shapes):
        log.warning("partial weight load from %s: %d model tensors keep their initial values (%s); %d export "
                    "tensors not loaded (%s)", where, len(gaps), describe_by_group(gaps, groups) or "none",
                    len(unexpected) + len(mismatched), _preview(unexpected + mismatched) or "none")
    return LoadReport(matched=matched, missing=[tgt[n][0] for n in missing], unexpected=unexpected,
                      total_backbone=len(backbone_keys), prefix=add, source_prefix=strip, mismatched=mismatched,
                      adapters=[k for n in tgt if n.startswith(add) and is_adapter_key(n) and n not in loaded
                                for k in tgt[n]],
                      normalize=export_normalize(path_or_state) if is_path else None)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then ``os.replace`` it into place.

    ``os.replace`` is atomic on POSIX and Windows: readers see the old file or the complete new one, never
    a partial write; if ``write`` raises, the temporary file is removed and ``path`` is untouched. The file gets
    the permissions a plain ``open(path, "w")`` would give it: ``0o666 & ~umask`` when new, the old mode when it
    replaces a file.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> p = atomic_write(Path(tempfile.mkdtemp()) / "a.txt", lambda tmp: tmp.write_text("done"))
        >>> p.read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path)
    mode = stat.S_IMODE(tmp.stat().st_mode)
    try:
        write(tmp)
        if stat.S_IMODE(tmp.stat().st_mode) != mode:  # a writer that replaced tmp (safetensors does) made it 0o600
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------------------------------------- helpers


def _preview(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def _new_temp_file(path: Path) -> Path:
    """An empty file next to ``path`` created like ``open()`` would (mode 0o666, less the umask).

    ``tempfile.mkstemp`` creates 0o600 files: an export shared with a team, or read by a serving user, would
    be unreadable to them. Creating with ``os.open(..., 0o666)`` lets the kernel apply the umask.
    """
    keep_mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else None
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        if keep_mode is not None:
            os.chmod(tmp, keep_mode)
        return tmp
    raise FileExistsError(f"could not create a temporary file next to {path}")


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


def _native_export_state(backbone: Backbone) -> dict[str, Tensor]:
    """``native_state_dict()`` without LoRA adapters (merged in) or wrapper names: what the plain model loads."""
    state = backbone.native_state_dict()
    if all(canonical_key(k) == k and not is_adapter_key(k) for k in state):
        return state
    if any(is_adapter_key(k) for k in state):
        from .lora import merge_lora

        merged = copy.deepcopy(backbone)  # the caller's model keeps training with its adapters
        merged.model = merge_lora(merged.model)
        state = merged.native_state_dict()
    return {canonical_key(k): v for k, v in state.items()}


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
    raise ValueError(f"{path} is not a weights file: it does not hold a state dict (a mapping of names to "
                     "tensors), nor one under 'state_dict' / 'model' / 'model_state_dict'.")

