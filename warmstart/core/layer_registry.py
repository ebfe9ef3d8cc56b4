"""The declarative layer-map registry: ordered regex rules per model family, and the engine that applies them.

A *layer map* says how one family of models splits into depth-ordered groups, the way timm's ``group_matcher``
does (``timm/models/_manipulate.py``): an ordered list of :class:`LayerRule` regexes over parameter names. A
parameter belongs to the first rule whose pattern matches it; a rule's capture groups (or, by default, the
matched text) name the group, so ``r"^layer\\d+\\."`` expands to one group per stage (``layer1`` ... ``layer4``)
and ``r"^encoder\\.block\\.(\\d+)\\."`` to one per block. Groups are ordered by rule, then by the first parameter
in each (registration order, which is depth order for ``ModuleList``/``Sequential`` stacks). A ``merge`` rule
joins the group before it (timm's ``MATCH_PREV_GROUP``: a final norm belongs to the last block). Parameters no
rule matches are output-side additions and join the head.

Users add a family with :func:`register_layer_map`; :mod:`warmstart.core.layer_families` holds the built-in ones.
This module is pure torch and imports no framework.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

ROLES = ("stem", "body", "backbone", "neck", "head")


@dataclass
class LayerGroup:
    """One depth level of a model: a name, a role and the parameters (by qualified name) in it.

    Example:
        >>> g = LayerGroup("head", "head", ["fc.weight", "fc.bias"], ["fc"])
        >>> g.role, len(g.param_names)
        ('head', 2)
    """

    name: str
    role: str
    param_names: list[str] = field(default_factory=list)
    module_names: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LayerRule:
    """One rule of a layer map: parameters whose name ``pattern`` matches (``re.match``) form groups of ``role``.

    ``name`` is the group's name, formatted with the capture groups (``"stage{0}"``); without it the matched text
    (minus a trailing ``"."``) is the name, so each distinct match is its own group. ``merge=True`` joins the
    matched parameters to the group just before (named ``"<previous>+<this>"``).

    Example:
        >>> LayerRule(r"^layer(\\d+)\\.", name="stage{0}")
        LayerRule(pattern='^layer(\\\\d+)\\\\.', role='body', name='stage{0}', merge=False)
    """

    pattern: str
    role: str = "body"
    name: str | None = None
    merge: bool = False

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"layer rule {self.pattern!r} has role {self.role!r}; roles are {ROLES}")
        try:
            re.compile(self.pattern)
        except re.error as err:
            raise ValueError(f"layer rule pattern {self.pattern!r} is not a valid regex: {err}") from err


RuleSpec = LayerRule | tuple
Rules = Sequence[RuleSpec]
# A family's groups from a model, or None to fall through to the next family (e.g. no structure recognised).
GroupBuilder = Callable[[nn.Module], "list[LayerGroup] | None"]


@dataclass(frozen=True)
class LayerMap:
    """A registered family: ``detect(model)`` says whether it applies, ``build(model)`` returns its groups."""

    name: str
    detect: Callable[[nn.Module], bool]
    build: GroupBuilder


_USER_MAPS: list[LayerMap] = []  # most recently registered first: user families win over built-in ones


def register_layer_map(
    name: str,
    rules: Rules | Callable[[nn.Module], Rules],
    *,
    detect: Callable[[nn.Module], bool],
) -> None:
    """Teach :func:`~warmstart.core.layer_groups` a model family: ordered regex rules, used when ``detect(model)``.

    ``rules`` is a list of :class:`LayerRule` (or ``(pattern, role[, name])`` tuples), or a function of the model
    returning one (for structure that depends on the instance, e.g. its depth). User families are tried before the
    built-in ones (torchvision, timm, Hugging Face, Ultralytics), newest first; registering a name again replaces
    it. Wrappers (peft, ``torch.compile``, DDP) are unwrapped before detection, so a rule sees the model's own
    parameter names.

    Example:
        >>> from torch import nn
        >>> from warmstart.core.layers import layer_groups
        >>> class Tower(nn.Sequential):
        ...     pass
        >>> m = Tower(nn.Linear(2, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3))
        >>> register_layer_map("tower", [(r"^0\\.", "stem", "input"), (r"^[12]\\.", "body"), ("", "head", "head")],
        ...                    detect=lambda model: isinstance(model, Tower))
        >>> [(g.name, g.role) for g in layer_groups(m)]
        [('input', 'stem'), ('1', 'body'), ('2', 'body'), ('head', 'head')]
        >>> unregister_layer_map("tower")
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"layer map name must be a non-empty string, got {name!r}")
    if not callable(detect):
        raise ValueError(f"register_layer_map({name!r}): detect must be a function model -> bool")
    if callable(rules):
        build = _rules_builder(rules)
    else:
        checked = to_rules(rules)  # validate now, not at the first model

        def build(model: nn.Module) -> list[LayerGroup]:
            return apply_rules(model, checked)

    unregister_layer_map(name)
    _USER_MAPS.insert(0, LayerMap(name, detect, build))


def unregister_layer_map(name: str) -> None:
    """Forget a family registered with :func:`register_layer_map` (no error if it is not registered).

    Example:
        >>> unregister_layer_map("never-registered")
    """
    _USER_MAPS[:] = [m for m in _USER_MAPS if m.name != name]


def user_layer_maps() -> list[LayerMap]:
    """The user-registered families, in the order they are tried.

    Example:
        >>> [m.name for m in user_layer_maps()]
        []
    """
    return list(_USER_MAPS)


def _rules_builder(fn: Callable[[nn.Module], Rules]) -> GroupBuilder:
    def build(model: nn.Module) -> list[LayerGroup] | None:
        rules = fn(model)
        return None if rules is None else apply_rules(model, to_rules(rules))
    return build


def to_rules(specs: Rules) -> list[LayerRule]:
    """Normalise ``(pattern, role[, name])`` tuples and :class:`LayerRule` objects to a list of rules.

    Example:
        >>> [r.name for r in to_rules([(r"^stem\\.", "stem", "stem"), LayerRule(r"^blocks\\.\\d+\\.")])]
        ['stem', None]
    """
    if isinstance(specs, str) or not isinstance(specs, Sequence) or not specs:
        raise ValueError(f"layer map rules must be a non-empty list of LayerRule or (pattern, role[, name]) "
                         f"tuples, got {specs!r}")
    out = []
    for spec in specs:
        if isinstance(spec, LayerRule):
            out.append(spec)
        elif isinstance(spec, tuple) and 1 <= len(spec) <= 3 and all(isinstance(s, str) for s in spec):
            out.append(LayerRule(*spec))
        else:
            raise ValueError(f"layer rule {spec!r} must be a LayerRule or a (pattern, role[, name]) tuple")
    return out


def apply_rules(model: nn.Module, rules: Sequence[LayerRule]) -> list[LayerGroup]:
    """Group ``model``'s parameters by ``rules`` (first match wins), ordered by rule then by first parameter.

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.LayerNorm(2), nn.Linear(2, 1))
        >>> rules = [LayerRule(r"^([01])\\.", name="block{0}"), LayerRule(r"^2\\.", merge=True)]
        >>> [(g.name, g.role) for g in apply_rules(m, rules)]
        [('block0', 'body'), ('block1+2', 'body'), ('head', 'head')]
    """
    compiled = [(re.compile(r.pattern), r) for r in rules]
    found: dict[tuple[int, str], LayerGroup] = {}  # insertion order = first parameter of each group
    leftovers = []
    for pname, _ in model.named_parameters():
        for ri, (rx, rule) in enumerate(compiled):
            m = rx.match(pname)
            if m is None:
                continue
            matched = m.group(0).rstrip(".") or pname
            gname = rule.name.format(*m.groups()) if rule.name else matched
            group = found.get((ri, gname))
            if group is None:
                group = found[(ri, gname)] = LayerGroup(gname, rule.role, [], [])
            group.param_names.append(pname)
            if matched not in group.module_names:
                group.module_names.append(matched)
            break
        else:
            leftovers.append(pname)
    groups: list[LayerGroup] = []
    for key in sorted(found, key=lambda k: k[0]):  # stable: within a rule, first-parameter order
        group = found[key]
        if compiled[key[0]][1].merge and groups:
            prev = groups[-1]
            prev.name = f"{prev.name}+{group.name}"
            prev.param_names += group.param_names
            prev.module_names += group.module_names
        else:
            groups.append(group)
    if leftovers:
        # Parameters no rule named (extra heads, adapters at the root) are output-side additions.
        if groups and groups[-1].role == "head":
            groups[-1].param_names.extend(leftovers)
        else:
            groups.append(LayerGroup("head", "head", leftovers, []))
    return groups


def group_label(names: Sequence[str], others: Sequence[str]) -> str:
    """The shortest module prefixes that hold exactly ``names``, joined by "+" (e.g. "blocks.11+norm").

    A plain common prefix would mislabel groups that share a parent with other groups: timm's ConvNeXt puts
    ``stages.1.downsample`` with ``stages.1.blocks.0``, and calling that group "stages.1" would make
    ``freeze(model, "stages.1")`` look like it froze the whole stage.

    Example:
        >>> group_label(["blocks.11.w", "norm.w"], ["blocks.10.w", "head.w"])
        'blocks.11+norm'
    """
    taken = {".".join(parts[:k]) for parts in (n.split(".") for n in others) for k in range(1, len(parts) + 1)}
    labels: dict[str, None] = {}
    for name in names:
        parts = name.split(".")
        prefix = name
        for k in range(1, len(parts) + 1):
            if ".".join(parts[:k]) not in taken:
                prefix = ".".join(parts[:k])
                break
        labels[prefix] = None
    return "+".join(labels)


def prefix_pattern(prefixes: Sequence[str]) -> str:
    """A regex matching parameters under any of ``prefixes`` (module paths or exact parameter names).

    Example:
        >>> bool(re.match(prefix_pattern(["bert.embeddings", "logit_scale"]), "bert.embeddings.LayerNorm.weight"))
        True
    """
    return "^(?:" + "|".join(re.escape(p) for p in prefixes) + r")(?:\.|$)"
