"""Which state-dict key is which: wrapper-free key names, prefix detection, heads, adapters, layer groups.

The same tensor has many names. peft LoRA moves ``layer1.0.conv1.weight`` to ``layer1.0.conv1.base_layer.weight``;
a ``PeftModel`` adds ``base_model.model.``; DDP adds ``module.``; ``torch.compile`` adds ``_orig_mod.``; Lightning
keeps the backbone under ``backbone.`` or ``model.``. :func:`canonical_key` removes the wrapper names (they are
never part of an architecture), and :func:`find_prefixes` finds the one prefix that differs between an export and
a model (where the backbone lives). Together they let one loader (``checkpoints.load_backbone_weights``) match
every tensor whatever wrapped the model when it was saved or when it is loaded.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

# Wrappers that own the whole model: only ever a leading prefix.
_LEADING_WRAPPERS = ("module.", "base_model.model.")
# Wrappers that sit around one submodule: a segment anywhere in the key. ``modules_to_save.<adapter>`` and
# ``original_module`` are peft's two copies of a fully trained module (the head).
_WRAPPER_SEGMENT = re.compile(r"(?:^|(?<=\.))(?:_orig_mod|base_layer|original_module|modules_to_save\.[^.]+)\.")
_ADAPTER = re.compile(r"(?:^|\.)lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)(?:\.|$)")
# Keys that may stay at their initial values in the target: the task head a fine-tune trains from scratch.
HEAD_WORDS = frozenset(("fc", "classifier", "head", "heads", "logits", "pooler"))


def canonical_key(key: str) -> str:
    """``key`` without the names wrappers add (peft, DDP, ``torch.compile``); the architecture's own name.

    Example:
        >>> canonical_key("base_model.model.layer1.0.conv1.base_layer.weight")
        'layer1.0.conv1.weight'
        >>> canonical_key("module._orig_mod.backbone.conv1.weight")
        'backbone.conv1.weight'
    """
    changed = True
    while changed:  # wrappers nest (DDP around a compiled PeftModel): peel until none is left
        changed = False
        for wrapper in _LEADING_WRAPPERS:
            if key.startswith(wrapper):
                key, changed = key[len(wrapper):], True
        stripped = _WRAPPER_SEGMENT.sub("", key)
        if stripped != key:
            key, changed = stripped, True
    return key


def is_adapter_key(key: str) -> bool:
    """True for a LoRA adapter tensor (``lora_A``, ``lora_B``, ...): new in a model, never in a plain export.

    Example:
        >>> is_adapter_key("layer1.0.conv1.lora_A.default.weight"), is_adapter_key("layer1.0.conv1.weight")
        (True, False)
    """
    return bool(_ADAPTER.search(key))


def canonical_names(keys: Iterable[str]) -> dict[str, list[str]]:
    """Canonical name -> the real keys that carry it (several only for peft's two copies of a head).

    peft's ``original_module`` copy comes last, so the first real key is the one that was trained.

    Example:
        >>> canonical_names(["fc.original_module.weight", "fc.modules_to_save.default.weight", "conv.weight"])
        {'fc.weight': ['fc.modules_to_save.default.weight', 'fc.original_module.weight'],
         'conv.weight': ['conv.weight']}
    """
    out: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        out[canonical_key(key)].append(key)
    for names in out.values():
        names.sort(key=lambda k: ".original_module." in f".{k}")
    return dict(out)


def find_prefixes(source: Sequence[str], target: Sequence[str], prefix: str | None = None) -> tuple[str, str]:
    """Best (prefix to add to export keys, prefix to strip from them), by the number of names that then match.

    ``prefix`` fixes the first (where the backbone lives in the model). Candidates are the prefixes that make one
    side's names a suffix of the other's, and each side's most common first name (``backbone.``, ``model.``), so
    a checkpoint saved from ``self.backbone`` loads into a module holding ``self.model``. Ties keep the earlier
    candidate: no prefix is tried first.

    Example:
        >>> find_prefixes(["backbone.model.conv.weight", "head.w"], ["conv.weight", "fc.w"])
        ('', 'backbone.model.')
        >>> find_prefixes(["backbone.conv.weight", "backbone.bn.bias"], ["model.conv.weight", "model.bn.bias"])
        ('model.', 'backbone.')
    """
    src = set(source)
    adds = [prefix] if prefix is not None else _unique(
        ["", *(p for p, _ in _suffix_candidates(target, src).most_common(5)), *_first_names(target)])
    best, best_score = ("", ""), -1
    for add in adds:
        view = {t[len(add):] for t in target if t.startswith(add)}
        strips = _unique(["", *(p for p, _ in _suffix_candidates(source, view).most_common(5)), *_first_names(source)])
        for strip in strips:
            score = sum(1 for s in source if s.startswith(strip) and s[len(strip):] in view)
            if score > best_score:
                best, best_score = (add, strip), score
    return best


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _first_names(keys: Iterable[str], n: int = 3) -> list[str]:
    """The ``n`` most common first key segments with their dot (``backbone.``): where a module keeps a model."""
    return [p for p, _ in Counter(k.split(".", 1)[0] + "." for k in keys if "." in k).most_common(n)]


def _suffix_candidates(keys: Iterable[str], others: set[str]) -> Counter:
    """Prefixes p with p + o == k for k in keys, o in others, counted by how many keys they explain."""
    found: Counter = Counter()
    for key in keys:
        pos = key.find(".")
        while pos != -1:
            if key[pos + 1:] in others:
                found[key[: pos + 1]] += 1
            pos = key.find(".", pos + 1)
    return found


def check_patterns(patterns: str | Sequence[str] | None) -> list[str]:
    """``allow_missing`` as a list of patterns; refuses what is not a string (a typo there would hide tensors).

    Example:
        >>> check_patterns("layer4.*"), check_patterns(None)
        (['layer4.*'], [])
    """
    if patterns is None:
        return []
    items = [patterns] if isinstance(patterns, str) else list(patterns)
    bad = [p for p in items if not isinstance(p, str) or not p]
    if bad:
        raise ValueError(f"allow_missing takes name patterns (fnmatch like 'layer4.*' or regexes), got {bad!r}")
    return items


def matches_any(key: str, patterns: Sequence[str]) -> bool:
    """True when ``key`` matches one of ``patterns`` as an fnmatch pattern or as a full regex.

    Example:
        >>> matches_any("layer4.0.conv1.weight", ["layer4.*"]), matches_any("conv1.weight", [r"layer\\d\\..*"])
        (True, False)
    """
    for pattern in patterns:
        if fnmatch.fnmatchcase(key, pattern):
            return True
        try:
            if re.fullmatch(pattern, key):
                return True
        except re.error:  # an fnmatch pattern need not be a valid regex
            continue
    return False


def module_of(key: str) -> str:
    """The module a state-dict key belongs to (``layer1.0.bn1.running_mean`` -> ``layer1.0.bn1``).

    Example:
        >>> module_of("layer1.0.bn1.running_mean"), module_of("cls_token")
        ('layer1.0.bn1', '')
    """
    return key.rsplit(".", 1)[0] if "." in key else ""


def key_groups(model: nn.Module, keys: Iterable[str], prefix: str = "") -> dict[str, tuple[str, str]]:
    """(layer group name, role) of each canonical ``key`` of ``model``, from ``core.layers.layer_groups``.

    Keys are canonical names in ``model.state_dict()``; those under ``prefix`` are looked up in the layer map of
    the submodule there (its own head is then a head). Buffers go to the group of their module's parameters.

    Example:
        >>> import torchvision
        >>> key_groups(torchvision.models.resnet18(), ["conv1.weight", "layer4.1.bn2.running_var", "fc.bias"])
        {'conv1.weight': ('stem', 'stem'), 'layer4.1.bn2.running_var': ('layer4', 'body'), 'fc.bias': ('head', 'head')}
    """
    from .layers import layer_groups

    sub = model
    if prefix:
        try:
            sub = model.get_submodule(prefix.rstrip("."))
        except AttributeError:  # prefix crosses a wrapper name (canonical); the whole model's map still works
            sub, prefix = model, ""
    by_module: dict[str, tuple[str, str]] = {}
    for group in layer_groups(sub):
        for name in group.param_names:
            by_module.setdefault(module_of(canonical_key(name)), (group.name, group.role))
    out = {}
    for key in keys:
        rel = key[len(prefix):] if prefix and key.startswith(prefix) else key
        module = module_of(rel)
        while module not in by_module and module:
            module = module_of(module)
        out[key] = by_module.get(module, ("other", "body"))
    return out


def describe_by_group(keys: Sequence[str], groups: Mapping[str, tuple[str, str]], per_group: int = 3) -> str:
    """``keys`` listed by layer group, for warnings and errors: ``stem: conv1.weight; layer4: 2 (...)``.

    Example:
        >>> describe_by_group(["conv1.weight", "layer4.0.a", "layer4.0.b"],
        ...                   {"conv1.weight": ("stem", "stem"), "layer4.0.a": ("layer4", "body")})
        'stem: conv1.weight; layer4: layer4.0.a; other: layer4.0.b'
    """
    by_group: dict[str, list[str]] = {}
    for key in keys:
        by_group.setdefault(groups.get(key, ("other", "body"))[0], []).append(key)
    parts = []
    for name, members in by_group.items():
        shown = ", ".join(members[:per_group]) + (f", ... (+{len(members) - per_group})"
                                                  if len(members) > per_group else "")
        parts.append(f"{name}: {shown}" if len(members) == 1 else f"{name}: {len(members)} ({shown})")
    return "; ".join(parts)


def head_keys(missing: Iterable[str], loaded: set[str], groups: Mapping[str, tuple[str, str]], prefix: str = "",
              by_role: bool = True) -> set[str]:
    """The ``missing`` keys that are a task head/neck, which a fine-tune legitimately trains from scratch.

    A head is what the export supplies *nothing* to: a module named like a head (``fc``, ``classifier``) none of
    whose tensors ``loaded``, or (``by_role``) a head/neck layer group none of whose tensors loaded. Pass
    ``by_role=False`` for a model without a task head (a bare backbone's last group is "head" only by position).

    Example:
        >>> groups = {"conv.weight": ("stem", "stem"), "fc.weight": ("head", "head")}
        >>> head_keys(["fc.weight", "conv.weight"], set(), groups)
        {'fc.weight'}
    """
    loaded_modules = {module_of(n) for n in loaded}
    loaded_groups = {groups[n][0] for n in loaded if n in groups}
    out = set()
    for key in missing:
        named_head = bool(set(key[len(prefix):].split(".")[:-1]) & HEAD_WORDS)
        group, role = groups.get(key, ("other", "body"))
        if (named_head and module_of(key) not in loaded_modules) or \
                (by_role and role in ("head", "neck") and group not in loaded_groups):
            out.add(key)
    return out
