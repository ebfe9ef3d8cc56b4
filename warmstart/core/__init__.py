"""Framework-neutral core: layer map, freezing, discriminative LR, LoRA. Pure torch (+ peft for LoRA).

Example:
    >>> import torchvision
    >>> from warmstart.core import layer_groups, freeze, param_groups
    >>> m = torchvision.models.resnet18(num_classes=3)
    >>> [g.name for g in layer_groups(m)]
    ['stem', 'layer1', 'layer2', 'layer3', 'layer4', 'head']
"""

from .controller import FinetuneController
from .freezing import (
    UnfreezeSchedule,
    apply_schedule,
    clear_bn_policy,
    freeze,
    frozen_groups,
    select_groups,
    set_bn_policy,
    unfreeze,
)
from .layers import (
    LayerGroup,
    LayerRule,
    group_names,
    layer_family,
    layer_groups,
    register_layer_map,
    unregister_layer_map,
)
from .lora import (
    apply_lora,
    find_lora_targets,
    has_lora,
    lora_config,
    lora_state_dict,
    merge_lora,
    trainable_summary,
)
from .param_groups import group_lr_table, group_scales, is_no_decay, param_groups
from .plan import FinetunePlan

__all__ = [
    "FinetuneController", "FinetunePlan", "LayerGroup", "LayerRule", "UnfreezeSchedule", "apply_lora",
    "apply_schedule", "clear_bn_policy",
    "find_lora_targets",
    "freeze", "frozen_groups", "group_lr_table", "group_names", "group_scales", "has_lora", "is_no_decay",
    "layer_family", "layer_groups", "lora_config", "lora_state_dict", "merge_lora", "param_groups", "select_groups",
    "register_layer_map", "set_bn_policy", "trainable_summary", "unfreeze", "unregister_layer_map",
]
