"""The built-in layer maps: torchvision, timm, Hugging Face transformers and Ultralytics.

Each family is recognised by class and module names (no framework is imported to look), and declares its depth
structure as ordered :class:`~warmstart.core.layer_registry.LayerRule` regexes: torchvision by a table per
architecture, timm by the model's own ``group_matcher(coarse=False)``, Hugging Face by rules derived from the
model's block stacks (encoder before decoder, one group per block), Ultralytics by its yaml's backbone length.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from .layer_registry import LayerGroup, LayerMap, LayerRule, apply_rules, group_label, prefix_pattern


def has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _mro(module: nn.Module) -> tuple[type, ...]:
    return type(module).__mro__


# ----------------------------------------------------------------------------------------------- torchvision

_HEAD = ("", "head", "head")  # everything after the body: pooling norms, classifiers, auxiliary heads
_FEATURES = [(r"^features\.0\.", "stem"), (r"^features\.\d+\.", "body"), _HEAD]  # stem + stages in `features`

# Per classification architecture (class name): stem, one group per stage (or per block where a model has no
# stages, e.g. VGG's convs, MobileNet's inverted residuals), then the head. Stage-level like ResNet's layer1-4.
TORCHVISION_RULES: dict[str, list[tuple[str, ...]]] = {
    "ResNet": [(r"^(?:conv1|bn1)\.", "stem", "stem"), (r"^layer\d+\.", "body"), _HEAD],
    "RegNet": [(r"^stem\.", "stem", "stem"), (r"^trunk_output\.block\d+\.", "body"), _HEAD],
    "VisionTransformer": [(r"^(?:conv_proj\.|class_token$|encoder\.pos_embedding$)", "stem", "stem"),
                          (r"^encoder\.layers\.[^.]+\.", "body"), _HEAD],
    "DenseNet": [(r"^features\.(?:conv0|norm0)\.", "stem", "stem"),
                 (r"^features\.(?:denseblock|transition)\d+\.", "body"), _HEAD],
    "MNASNet": [(r"^layers\.[0-7]\.", "stem", "stem"), (r"^layers\.\d+\.", "body"), _HEAD],
    "GoogLeNet": [(r"^conv[123]\.", "stem", "stem"), (r"^inception\w+\.", "body"), _HEAD],
    "Inception3": [(r"^Conv2d_\w+\.", "stem", "stem"), (r"^Mixed_\w+\.", "body"), _HEAD],
    "ShuffleNetV2": [(r"^conv1\.", "stem", "stem"), (r"^(?:stage\d+|conv5)\.", "body"), _HEAD],
    "MaxVit": [(r"^stem\.", "stem", "stem"), (r"^blocks\.\d+\.", "body"), _HEAD],
    **{cls: _FEATURES for cls in ("AlexNet", "ConvNeXt", "EfficientNet", "MobileNetV2", "MobileNetV3",
                                  "SqueezeNet", "SwinTransformer", "VGG")},
}


def _torchvision_class(module: nn.Module) -> str | None:
    """The torchvision architecture ``module`` is (or subclasses), if it has a rule table."""
    for cls in _mro(module):
        if cls.__module__.startswith("torchvision.models") and cls.__name__ in TORCHVISION_RULES:
            return cls.__name__
    return None


def _torchvision_groups(model: nn.Module) -> list[LayerGroup]:
    return apply_rules(model, [LayerRule(*spec) for spec in TORCHVISION_RULES[_torchvision_class(model)]])


# ------------------------------------------------------------------------------------------------------ timm


def _is_timm(module: nn.Module) -> bool:
    return type(module).__module__.startswith("timm.") and hasattr(module, "group_matcher")


def _timm_groups(model: nn.Module) -> list[LayerGroup] | None:
    """The model's own ``group_matcher`` (its declared depth structure), at block granularity, applied by timm."""
    from timm.models import group_parameters  # timm is already imported: the model is a timm model

    try:
        grouped = group_parameters(model, model.group_matcher(coarse=False))
    except (NotImplementedError, AttributeError, TypeError):
        return None  # a matcher some timm models declare but do not implement: generic fallback
    ordered = [list(names) for names in grouped.values()]
    classifier = _timm_classifier_params(model)
    groups = []
    for i, names in enumerate(ordered):
        if i == len(ordered) - 1 and len(ordered) > 1 and classifier & set(names):
            groups.append(LayerGroup("head", "head", names))
        elif i == 0:
            groups.append(LayerGroup("stem", "stem", names))
        else:
            label = group_label(names, [n for j, group in enumerate(ordered) if j != i for n in group])
            groups.append(LayerGroup(label, "body", names, label.split("+")))
    return groups


def _timm_classifier_params(model: nn.Module) -> set[str]:
    """Names of the classifier's parameters: with ``num_classes=0`` there are none, and then the last group is
    the last block (the head by position, but not to be *named* "head")."""
    try:
        clf = model.get_classifier()
    except Exception:  # noqa: BLE001 - any failure just means "no known classifier"
        return set()
    modules = clf if isinstance(clf, tuple | list) else (clf,)
    ids = {id(p) for m in modules if isinstance(m, nn.Module) for p in m.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


# ---------------------------------------------------------------------------------------------- Hugging Face

# Output-side tensors registered at the root of two-tower models (CLIP, SigLIP), often before the towers.
_HF_OUTPUT = re.compile(r"^logit_(?:scale|bias)$")
def _embedding_like(param: str) -> bool:
    """Embedding modules and their norms are input-side (GPT-NeoX's ``embed_out`` is its LM head)."""
    return any("embed" in seg and not seg.endswith("_out") for seg in param.split(".")[:-1])


def _is_hf(module: nn.Module) -> bool:
    return any(c.__name__ == "PreTrainedModel" for c in _mro(module))


def hf_rules(model: nn.Module) -> list[LayerRule] | None:
    """Rules for a transformers model: per block stack (encoder first), its input side, one group per block.

    Parameters outside the stacks belong to the stack whose module path they share most, then go by position:
    before a stack (or named like an embedding) they are its input side (``embeddings`` for the first stack, a
    stem group for a decoder's or a second tower's embeddings), after a stack they join its last block (an
    encoder's final norm), after the last stack they are the head.

    Example:
        >>> import transformers
        >>> cfg = transformers.BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        ...                               intermediate_size=8)
        >>> for rule in hf_rules(transformers.BertModel(cfg)):
        ...     print(rule.pattern, rule.role, rule.name)
        ^(?:embeddings)(?:\\.|$) stem embeddings
        ^encoder\\.layer\\.[^.]+\\. body None
         head head
    """
    names = [n for n, _ in model.named_parameters()]
    stacks = block_stacks(model)
    if not stacks:
        return None
    starts = {s: next(i for i, n in enumerate(names) if n.startswith(s + ".")) for s in stacks}
    before: dict[str, list[str]] = {s: [] for s in stacks}
    after: dict[str, list[str]] = {s: [] for s in stacks}
    for i, n in enumerate(names):
        if _HF_OUTPUT.match(n) or any(n.startswith(s + ".") for s in stacks):
            continue
        overlap = {s: _shared_depth(n, s) for s in stacks}
        best = max(overlap.values())
        candidates = [s for s in stacks if overlap[s] == best]
        earlier = [s for s in candidates if starts[s] < i]
        if _embedding_like(n):  # input-side wherever it is registered (BART's layernorm_embedding comes last)
            later = [s for s in candidates if starts[s] > i]
            before[min(later or candidates, key=starts.__getitem__)].append(n)
        elif earlier:
            stack = max(earlier, key=starts.__getitem__)
            if stack != stacks[-1]:
                after[stack].append(n)  # else: after the last stack, it is the head (catch-all rule)
        else:
            before[min(candidates, key=starts.__getitem__)].append(n)
    rules = []
    for k, stack in enumerate(stacks):
        if before[stack]:
            label = _label(names, before[stack])
            rules.append(LayerRule(prefix_pattern(label.split("+")), "stem", "embeddings" if k == 0 else label))
        rules.append(LayerRule(rf"^{re.escape(stack)}\.[^.]+\."))
        if after[stack]:
            label = _label(names, after[stack])
            rules.append(LayerRule(prefix_pattern(label.split("+")), "body", label, merge=True))
    return rules + [LayerRule(*_HEAD)]


def _label(names: Sequence[str], part: Sequence[str]) -> str:
    members = set(part)
    return group_label(part, [n for n in names if n not in members])


def _shared_depth(param: str, path: str) -> int:
    k = 0
    for a, b in zip(param.split(".")[:-1], path.split(".")):
        if a != b:
            break
        k += 1
    return k


def block_stacks(model: nn.Module, min_share: float = 0.1) -> list[str]:
    """Paths of the model's stacks of repeated blocks, encoder-side first (then in registration order).

    A stack is an outermost ``ModuleList``/``Sequential`` of at least two same-class children with parameters,
    holding at least ``min_share`` of the largest stack's parameters (small repeated heads are not depth).

    Example:
        >>> import transformers
        >>> cfg = transformers.T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=8, num_layers=2, num_heads=2)
        >>> block_stacks(transformers.T5Model(cfg))
        ['encoder.block', 'decoder.block']
    """
    found: list[tuple[str, int]] = []
    for path, mod in model.named_modules():
        if not path or not isinstance(mod, nn.ModuleList | nn.Sequential):
            continue
        if any(path.startswith(p + ".") for p, _ in found):
            continue  # a list inside a block (T5's per-block `layer`) is not a depth axis
        kids = [c for c in mod.children() if has_params(c)]
        if len(kids) >= 2 and len({type(c) for c in kids}) == 1:
            found.append((path, sum(p.numel() for p in mod.parameters())))
    if not found:
        return []
    largest = max(size for _, size in found)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    stacks = [p for p, size in found if size >= min_share * largest]
    return sorted(stacks, key=lambda p: ("decoder" in p.split("."), order[p]))


def _hf_groups(model: nn.Module) -> list[LayerGroup] | None:
    rules = hf_rules(model)
    return None if rules is None else apply_rules(model, rules)


# ----------------------------------------------------------------------------------------------- Ultralytics


def _is_ultralytics(module: nn.Module) -> bool:
    return type(module).__module__.startswith("ultralytics.") and isinstance(getattr(module, "model", None),
                                                                             nn.Sequential)


def ultralytics_rules(model: nn.Module) -> list[LayerRule]:
    """One group per ``model.N`` layer: the yaml's backbone section, then neck, and the last layer is the head."""
    n_backbone = len(model.yaml.get("backbone", [])) if isinstance(getattr(model, "yaml", None), dict) else 0
    layers = list(model.model.named_children())
    rules = []
    for idx, (name, layer) in enumerate(layers):
        if has_params(layer):
            role = "head" if idx == len(layers) - 1 else "backbone" if idx < n_backbone else "neck"
            rules.append(LayerRule(rf"^model\.{re.escape(name)}\.", role))
    return rules


def _ultralytics_groups(model: nn.Module) -> list[LayerGroup]:
    return apply_rules(model, ultralytics_rules(model))


BUILTIN_MAPS = (
    LayerMap("ultralytics", _is_ultralytics, _ultralytics_groups),
    LayerMap("timm", _is_timm, _timm_groups),
    LayerMap("torchvision", lambda m: _torchvision_class(m) is not None, _torchvision_groups),
    LayerMap("hf", _is_hf, _hf_groups),
)
