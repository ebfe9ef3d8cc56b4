"""One adapter for every vision backbone: pooled ``(B, D)`` features, ``feature_dim`` and native weights.

SSL methods, the kNN monitor and ``embed`` only need "image batch in, one vector per image out". Each
library gets there differently (torchvision's penultimate layer, timm's ``forward_head(pre_logits=True)``,
an HF model's pooled output, YOLO's layers through SPPF), so :func:`build_backbone` hides that behind
:class:`Backbone`. The adapter never copies weights: ``Backbone.model`` *is* the native module, so what
``native_state_dict`` returns loads straight back into the library's own model class (ARCHITECTURE.md rule 6).

Frameworks are imported inside the builders, never at import time of this module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._optional import require

FeatureFn = Callable[[nn.Module, Tensor], Tensor]
FAMILIES = ("torchvision", "timm", "hf", "ultralytics", "custom")
IMAGENET_NORMALIZE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# What each family's own training pipeline feeds the model; SSL views must match it, or the exported weights
# (BatchNorm statistics above all) are tuned to inputs the user's fine-tuning never shows them.
# Ultralytics trains on pixels / 255 with no mean/std step.
_INPUT_NORMALIZE: dict[str, dict | None] = {"ultralytics": None}
_TV_CLASSIFIERS = {"fc", "classifier", "head", "heads"}  # where torchvision models keep their classifier

# Tiny transformers configs so "hf/vit" etc. build in milliseconds for tests and demos.
_HF_TINY: dict[str, dict[str, Any]] = {
    "vit": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, patch_size=8),
    "convnext": dict(num_channels=3, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1]),
    "resnet": dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic"),
}
# Models whose pooler is a trained dense layer that fine-tuning heads never use: build without it, so every
# parameter gets a gradient (DDP errors on unused parameters) and features are the class token, like the
# library's own image-classification head reads them.
_HF_CLS_TOKEN = {"vit", "deit", "dinov2", "beit", "data2vec-vision", "vit_msn"}


class Backbone(nn.Module):
    """A vision model seen as a feature extractor: ``forward(x) -> (B, feature_dim)`` pooled features.

    ``model`` is the wrapped native module (parameters shared, nothing copied; for Ultralytics a
    :class:`YOLOBackboneLayers` holding the YOLO model's own backbone layers); ``native_state_dict()`` returns
    its weights in the native key layout, i.e. what ``export_backbone`` writes and what the library's own model
    class loads. ``family`` is one of ``FAMILIES``, ``spec`` the spec string it was built from (None for a
    module), ``image_size`` the size of the dummy forward that measured ``feature_dim``, ``in_channels`` the
    input channels it takes (3 unless built with ``channels=``; then also ``info["in_channels"]``), and ``info``
    what a native loader needs (``hf_config``, ``timm_name``, ``yaml``). Build one with :func:`build_backbone`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> bb = Backbone(net, family="custom")
        >>> bb.feature_dim, tuple(bb(torch.randn(2, 3, 32, 32)).shape)
        (8, (2, 8))
        >>> sorted(bb.native_state_dict())
        ['0.bias', '0.weight']
    """

    def __init__(
        self,
        model: nn.Module,
        feature_fn: FeatureFn | None = None,
        *,
        family: str = "custom",
        spec: str | None = None,
        image_size: int = 64,
        info: dict[str, Any] | None = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        self.model = model
        self.family = family
        self.spec = spec
        self.image_size = int(image_size)
        self.in_channels = int(in_channels)
        # A plain attribute (not a submodule): the feature function is code, not state.
        self._feature_fn = feature_fn or _default_features
        self.info: dict[str, Any] = dict(info or {})
        if self.in_channels != 3:  # recorded in backbone.json, so a loader rebuilds the same stem
            self.info["in_channels"] = self.in_channels
        self.feature_dim = _infer_feature_dim(self, self.image_size)

    def forward(self, x: Tensor) -> Tensor:
        feats = self._feature_fn(self.model, x)
        if feats.ndim != 2:
            raise ValueError(
                f"the feature function of this {self.family} backbone returned shape {tuple(feats.shape)}; it must "
                "return pooled (batch, dim) features. Pass feature_fn=lambda m, x: ... that pools."
            )
        return feats

    @property
    def normalize(self) -> dict[str, list[float]] | None:
        """Input mean/std the native framework trains with (``None``: pixels / 255 only, as in Ultralytics).

        ``info["normalize"]``, when present, overrides the family default (a model whose weights were trained with
        other input statistics, such as the TF-converted EfficientNet-Lite teacher: mean = std = 0.5).

        Example:
            >>> from torch import nn
            >>> Backbone(nn.Flatten(), family="custom", image_size=2).normalize["mean"]
            [0.485, 0.456, 0.406]
        """
        if "normalize" in self.info:  # a model trained with its own input statistics (e.g. EfficientNet-Lite)
            return self.info["normalize"]
        return _INPUT_NORMALIZE.get(self.family, IMAGENET_NORMALIZE)

    def native_state_dict(self) -> dict[str, Tensor]:
        """Backbone weights keyed like the native model (e.g. ``layer1.0.conv1.weight``, ``model.0.conv.weight``).

        Example:
            >>> from torch import nn
            >>> bb = Backbone(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), family="custom", image_size=2)
            >>> list(bb.native_state_dict())
            ['1.weight', '1.bias']
        """
        return self.model.state_dict()

    def extra_repr(self) -> str:
        return f"family={self.family!r}, spec={self.spec!r}, feature_dim={self.feature_dim}"


def build_backbone(
    spec: str | nn.Module,
    *,
    feature_fn: FeatureFn | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    **model_kwargs: Any,
) -> Backbone:
    """Build (or wrap) a randomly initialised backbone from a spec; never downloads anything.

    Specs: ``"torchvision/<name>"`` (resnet, convnext, efficientnet, mobilenet, vit, ...; the classifier is
    replaced by ``nn.Identity``), ``"timm/<name>"`` (built with ``num_classes=0``), ``"hf/<vit|convnext|resnet>"``
    (tiny configs), ``"hf/<folder with config.json>"`` or ``"hf/<model_type>"`` (library default config),
    ``"ultralytics/<name>.yaml"`` (e.g. ``yolov8n.yaml``: the yaml's backbone section, through SPPF), or a model
    object: a torchvision / timm / transformers model, an Ultralytics ``YOLO`` or ``DetectionModel``
    (modules are shared, not copied), or any ``nn.Module`` with an optional ``feature_fn(module, x) -> (B, D)``.
    ``image_size`` is the size of the dummy forward that infers ``feature_dim`` (and the input size of
    fixed-size ViTs); ``model_kwargs`` go to the library constructor (e.g. ``img_size=32`` for timm ViTs).

    ``channels``: input channels other than RGB (1 for X-ray/depth, 4+ for multi-band). timm builds with
    ``in_chans``, transformers with ``config.num_channels``, Ultralytics with ``ch``; a torchvision model or a
    model object gets its stem conv replaced in place (``warmstart.core.channels.adapt_first_conv``: fresh weights for a
    spec, weights derived from the RGB filters for a model you pass in). A model whose stem cannot take them
    raises ValueError. ``None`` or 3: RGB, built exactly as without the argument.

    Example:
        >>> import torch
        >>> bb = build_backbone("torchvision/resnet18", image_size=32)
        >>> bb.family, bb.feature_dim, tuple(bb(torch.randn(2, 3, 32, 32)).shape)
        ('torchvision', 512, (2, 512))
        >>> "fc.weight" in bb.native_state_dict()
        False
        >>> build_backbone("torchvision/resnet18", image_size=32, channels=4).model.conv1.in_channels
        4
    """
    if channels is not None:
        from .channels import _check_channels

        channels = None if _check_channels(channels) == 3 else int(channels)
    if isinstance(spec, Backbone):
        if channels is not None and spec.in_channels != channels:
            raise ValueError(f"this Backbone takes {spec.in_channels} input channels, not channels={channels}; "
                             "build it with build_backbone(..., channels=...) or pass the model itself")
        return spec
    if isinstance(spec, nn.Module):
        return _wrap_module(spec, feature_fn, image_size, channels)
    if not isinstance(spec, str) or "/" not in spec:
        raise ValueError(_unknown_spec(spec))
    library, name = spec.split("/", 1)
    builders = {"torchvision": _torchvision, "timm": _timm, "hf": _hf, "ultralytics": _ultralytics}
    if library not in builders or not name:
        raise ValueError(_unknown_spec(spec))
    if channels is not None:
        model_kwargs = {**model_kwargs, "_channels": channels}
    backbone = builders[library](name, image_size, model_kwargs)
    if feature_fn is not None:  # the library's weights and key layout, the user's notion of features
        backbone = Backbone(backbone.model, feature_fn, family=backbone.family, image_size=backbone.image_size,
                            info=backbone.info, in_channels=backbone.in_channels)
    backbone.spec = spec
    return backbone


def list_backbones() -> list[str]:
    """Examples of valid backbone specs (any torchvision / timm model name works, not only these).

    Example:
        >>> "torchvision/resnet18" in list_backbones()
        True
    """
    return [
        "torchvision/resnet18", "torchvision/resnet50", "torchvision/convnext_tiny", "torchvision/efficientnet_b0",
        "torchvision/mobilenet_v3_small", "torchvision/vit_b_16",
        "timm/resnet18", "timm/vit_tiny_patch16_224", "timm/convnext_atto", "timm/test_vit", "timm/test_resnet",
        "hf/vit", "hf/convnext", "hf/resnet", "hf/<folder with config.json>",
        "ultralytics/yolov8n.yaml", "ultralytics/yolov8s.yaml", "ultralytics/yolo11n.yaml",
    ]


# ------------------------------------------------------------------------------------------------- helpers


def _unknown_spec(spec: object) -> str:
    return (
        f"unknown backbone spec {spec!r}. Valid forms: 'torchvision/<name>' (e.g. torchvision/resnet18), "
        "'timm/<name>' (e.g. timm/resnet18), 'hf/<vit|convnext|resnet|folder with config.json>', "
        "'ultralytics/<name>.yaml' (e.g. ultralytics/yolov8n.yaml), or an nn.Module (with an optional "
        "feature_fn(module, x) -> (batch, dim)). Examples: warmstart.core.backbones.list_backbones()."
    )


def _pool(out: Tensor) -> Tensor:
    """Feature maps (B, C, H, W) -> (B, C) by global average pooling; anything else is flattened."""
    if out.ndim == 4:
        return out.mean(dim=(2, 3))
    return out if out.ndim == 2 else out.flatten(1)


def _default_features(module: nn.Module, x: Tensor) -> Tensor:
    out = module(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return _pool(out)


@torch.no_grad()
def _infer_feature_dim(backbone: Backbone, image_size: int) -> int:
    # One dummy forward in eval mode (BN running stats untouched), then restore each module's own mode.
    modes = {m: m.training for m in backbone.modules()}
    try:
        backbone.eval()
        param = next(backbone.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        out = backbone(torch.zeros(2, backbone.in_channels, image_size, image_size, device=device, dtype=dtype))
    except ValueError:
        raise
    except Exception as err:
        if backbone.in_channels != 3:
            raise ValueError(
                f"the {backbone.family} backbone cannot take {backbone.in_channels}-channel input after its stem was "
                f"adapted ({type(err).__name__}: {err}). Build the model with {backbone.in_channels} input channels "
                "yourself and pass it in, or pick another backbone."
            ) from err
        raise ValueError(
            f"could not run a {image_size}x{image_size} image through the {backbone.family} backbone to infer its "
            f"feature size ({type(err).__name__}: {err}). Pass image_size= the input size this model expects."
        ) from err
    finally:
        for m, mode in modes.items():
            m.training = mode
    return int(out.shape[1])


def _class_module(module: nn.Module) -> str:
    return type(module).__module__


def _is_ultralytics_wrapper(module: nn.Module) -> bool:
    return any(c.__module__ == "ultralytics.engine.model" for c in type(module).__mro__)


def _is_ultralytics_model(module: nn.Module) -> bool:
    return _class_module(module).startswith("ultralytics.nn") and isinstance(getattr(module, "model", None),
                                                                             nn.Sequential)


def declared_channels(net: nn.Module) -> int:
    """The image channels ``net`` takes: a Backbone's ``in_channels`` (N when built with ``channels=N``), else 3.

    Not the first conv's input count: some stems start with a space-to-depth step (timm's TResNet), so that conv
    sees 12 or 48 channels of a 3-channel image.

    Example:
        >>> declared_channels(build_backbone("torchvision/resnet18", channels=1)), declared_channels(nn.Identity())
        (1, 3)
    """
    return int(net.in_channels) if isinstance(net, Backbone) else 3


def input_dtype(net: nn.Module, default: torch.dtype | None = None) -> torch.dtype | None:
    """The floating dtype ``net``'s parameters have (bf16/fp64 after a ``"-true"`` precision cast), else ``default``.

    Float inputs must be cast to it: Lightning casts the module under ``"-true"`` precisions, not every batch.

    Example:
        >>> input_dtype(nn.Linear(2, 2).bfloat16()), input_dtype(nn.Identity(), torch.float32)
        (torch.bfloat16, torch.float32)
    """
    return next((p.dtype for p in net.parameters() if p.is_floating_point()), default)


def _is_hf(module: nn.Module) -> bool:
    return any(c.__name__ == "PreTrainedModel" for c in type(module).__mro__)


def _wrap_module(module: nn.Module, feature_fn: FeatureFn | None, image_size: int | None,
                 channels: int | None = None) -> Backbone:
    if channels is not None:
        from .channels import adapt_first_conv

        # A model passed in usually carries trained weights: derive the new stem from its RGB filters.
        adapt_first_conv(module.model if _is_ultralytics_wrapper(module) else module, channels, init="rgb")
    ch = channels or 3
    if feature_fn is not None:
        return Backbone(module, feature_fn, family="custom", image_size=image_size or 64, in_channels=ch)
    if _is_ultralytics_wrapper(module):
        return _ultralytics_backbone(module.model, image_size, None, ch)
    if _is_ultralytics_model(module):
        return _ultralytics_backbone(module, image_size, None, ch)
    if _is_hf(module):
        return _hf_backbone(getattr(module, "base_model", module), image_size, ch)
    mod = _class_module(module)
    if mod.startswith("timm."):
        return _timm_backbone(module, image_size, ch)
    if mod.startswith("torchvision.models"):
        return _torchvision_backbone(module, image_size, ch)
    return Backbone(module, None, family="custom", image_size=image_size or 64, in_channels=ch)


# ---------------------------------------------------------------------------------------------- torchvision


def _torchvision(name: str, image_size: int | None, kwargs: dict[str, Any]) -> Backbone:
    tv = require("torchvision")
    if name not in tv.models.list_models(module=tv.models):  # classification models only
        raise ValueError(f"torchvision has no classification model {name!r}; see "
                         "torchvision.models.list_models(module=torchvision.models). Valid specs look like "
                         "'torchvision/resnet18'.")
    channels = kwargs.pop("_channels", None)
    if name.startswith("vit") and image_size and "image_size" not in kwargs:
        kwargs = {**kwargs, "image_size": image_size}  # torchvision ViTs fix their input size at construction
    model = tv.models.get_model(name, weights=None, **kwargs)
    if channels is not None:
        from .channels import adapt_first_conv

        adapt_first_conv(model, channels, init="random")  # random weights: nothing to derive the stem from
    return _torchvision_backbone(model, image_size, channels or 3)


def _torchvision_backbone(model: nn.Module, image_size: int | None, in_channels: int = 3) -> Backbone:
    """Replace the classifier (the last ``nn.Linear``) by ``nn.Identity``, in place.

    Torchvision classifiers all end in one Linear (resnet ``fc``, convnext/efficientnet/mobilenet ``classifier[-1]``,
    vit ``heads.head``); what enters it is the pooled penultimate feature. Removing it (rather than skipping it
    in forward) keeps every parameter used, which DDP requires, and keeps the export free of classifier keys.
    Dropout in the same classifier block is dropped too: it only adds noise to the features.
    """
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    # Only a Linear under the classifier attribute: on an already-stripped model the last Linear is inside
    # the body (a ViT/ConvNeXt MLP) and must stay.
    if linears and linears[-1].split(".")[0] in _TV_CLASSIFIERS:
        name = linears[-1]
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
        if isinstance(parent, nn.Sequential):
            for key, sub in parent.named_children():
                if isinstance(sub, nn.Dropout):
                    setattr(parent, key, nn.Identity())
    if getattr(model, "aux_logits", False):
        # GoogLeNet / Inception auxiliary classifiers: unused by features (DDP error) and not part of a backbone;
        # torchvision drops them the same way when loading weights with aux_logits=False.
        model.aux_logits = False
        for attr in ("aux1", "aux2", "AuxLogits"):
            if hasattr(model, attr):
                setattr(model, attr, None)
    size = image_size or getattr(model, "image_size", None) or 64
    return Backbone(model, None, family="torchvision", image_size=size, in_channels=in_channels)


# ------------------------------------------------------------------------------------------------------ timm


def _timm(name: str, image_size: int | None, kwargs: dict[str, Any]) -> Backbone:
    timm = require("timm")
    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r}; see timm.list_models(). Valid specs look like 'timm/resnet18'.")
    channels = kwargs.pop("_channels", None)
    kwargs = {"pretrained": False, "num_classes": 0, **kwargs}
    if channels is not None:
        kwargs["in_chans"] = channels  # timm builds (and initialises) the stem for these channels itself
    if kwargs.get("pretrained"):
        raise ValueError("warmstart never downloads weights: build with pretrained=False and load your own file.")
    if image_size and "img_size" not in kwargs:
        # Fixed-size models (ViTs) take img_size; CNNs reject it, and then the default is right anyway.
        try:
            model = timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError:
            model = timm.create_model(name, **kwargs)
    else:
        model = timm.create_model(name, **kwargs)
    return _timm_backbone(model, image_size, channels or 3)


def _timm_features(model: nn.Module, x: Tensor) -> Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


def _timm_backbone(model: nn.Module, image_size: int | None, in_channels: int = 3) -> Backbone:
    if getattr(model, "num_classes", 0):
        model.reset_classifier(0)  # in place: an unused classifier would break DDP and bloat the export
    cfg = getattr(model, "pretrained_cfg", None) or {}
    # Patch-embedding models (ViT, DeiT, ...) only run at the size they were built for; CNNs at any size.
    fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)
    size = image_size or (fixed[0] if isinstance(fixed, (tuple, list)) else fixed) or 64
    info = {"timm_name": cfg.get("architecture")}
    return Backbone(model, _timm_features, family="timm", image_size=size, info=info, in_channels=in_channels)


# -------------------------------------------------------------------------------------------- transformers


def _hf(name: str, image_size: int | None, kwargs: dict[str, Any]) -> Backbone:
    transformers = require("transformers", "hf")
    channels = kwargs.pop("_channels", None)
    folder = Path(name)
    if (folder / "config.json").is_file():
        config = transformers.AutoConfig.from_pretrained(str(folder))
    elif name in _HF_TINY:
        extra = {"image_size": image_size or 32} if name == "vit" else {}
        config = transformers.AutoConfig.for_model(name, **{**_HF_TINY[name], **extra})
    else:
        try:
            config = transformers.AutoConfig.for_model(name)
        except ValueError as err:
            raise ValueError(
                f"'hf/{name}' is neither a folder with config.json nor a transformers model type. "
                "Use hf/vit, hf/convnext, hf/resnet (tiny configs) or hf/<path to a saved model folder>."
            ) from err
    for key, value in kwargs.items():
        setattr(config, key, value)
    if channels is not None:
        if not hasattr(config, "num_channels"):
            raise ValueError(f"cannot build hf/{name} with channels={channels}: its config ({config.model_type}) has "
                             "no num_channels. Pick a vision model type (vit, convnext, resnet, ...).")
        config.num_channels = channels
    model_kwargs = {"add_pooling_layer": False} if config.model_type in _HF_CLS_TOKEN else {}
    model = transformers.AutoModel.from_config(config, **model_kwargs)
    return _hf_backbone(model, image_size, channels or 3)


def _hf_features(model: nn.Module, x: Tensor) -> Tensor:
    out = model(pixel_values=x)
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return _pool(pooled)
    hidden = out.last_hidden_state
    if hidden.ndim == 3:  # tokens: the class token, as the library's own classification heads read it
        return hidden[:, 0]
    return _pool(hidden)


def _hf_backbone(model: nn.Module, image_size: int | None, in_channels: int = 3) -> Backbone:
    config = model.config
    cfg_size = getattr(config, "image_size", None)
    if isinstance(cfg_size, (list, tuple)):
        cfg_size = cfg_size[0]
    # Patch-token models fix their input size in the position embeddings; CNNs run at any size.
    size = image_size or (cfg_size if config.model_type in _HF_CLS_TOKEN and cfg_size else 64)
    info = {"hf_config": config.to_dict(), "hf_model_class": type(model).__name__}
    return Backbone(model, _hf_features, family="hf", image_size=size, info=info, in_channels=in_channels)


# --------------------------------------------------------------------------------------------- ultralytics


def _ultralytics(name: str, image_size: int | None, kwargs: dict[str, Any]) -> Backbone:
    require("ultralytics", "yolo")
    from ultralytics.nn import tasks

    channels = kwargs.pop("_channels", None)
    if channels is not None:
        kwargs["ch"] = channels  # Ultralytics builds its first conv for ch input channels
    if not name.endswith((".yaml", ".yml")):
        raise ValueError(f"'ultralytics/{name}': give a model yaml such as 'ultralytics/yolov8n.yaml' (built "
                         "randomly initialised; load trained weights yourself, warmstart never downloads .pt files).")
    stem = Path(name).stem
    cls = tasks.ClassificationModel if stem.endswith("-cls") else tasks.DetectionModel
    if stem.endswith("-seg"):
        cls = tasks.SegmentationModel
    elif stem.endswith("-pose"):
        cls = tasks.PoseModel
    model = cls(name, verbose=False, **kwargs)
    return _ultralytics_backbone(model, image_size, name, channels or 3)


def _backbone_length(model: nn.Module) -> int:
    """Layers of the yaml's ``backbone:`` section (through SPPF for YOLOv8) that form a simple chain."""
    layers = model.model
    declared = len(getattr(model, "yaml", {}).get("backbone", [])) or len(layers)
    n = 0
    for layer in list(layers)[:declared]:
        if getattr(layer, "f", -1) != -1:
            break
        n += 1
    if n == 0:
        raise ValueError(f"{type(model).__name__} has no chain of backbone layers to take features from.")
    return n


class YOLOBackboneLayers(nn.Module):
    """The backbone layers of an Ultralytics model, shared (not copied), under the model's own key names.

    ``self.model`` is an ``nn.Sequential`` of the same layer objects as ``DetectionModel.model[:n]``, so the
    state_dict keys are the DetectionModel's (``model.0.conv.weight``) and training updates the YOLO model.
    Holding only these layers (not the whole DetectionModel) keeps neck/head parameters out of the backbone:
    DDP fails on parameters that get no gradient.

    Example:
        >>> from torch import nn
        >>> layers = YOLOBackboneLayers([nn.Conv2d(3, 4, 3), nn.Conv2d(4, 8, 3)])
        >>> list(layers.state_dict())[:2]
        ['model.0.weight', 'model.0.bias']
    """

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _ultralytics_backbone(model: nn.Module, image_size: int | None, yaml_name: str | None,
                          in_channels: int = 3) -> Backbone:
    n = _backbone_length(model)
    yaml = getattr(model, "yaml", {}) or {}
    info = {"yaml": yaml_name or yaml.get("yaml_file"), "backbone_layers": n}
    layers = YOLOBackboneLayers(list(model.model)[:n])
    return Backbone(layers, None, family="ultralytics", image_size=image_size or 64, info=info,
                    in_channels=in_channels)
