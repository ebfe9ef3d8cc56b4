"""Which memory layout the SSL engine trains convolutional backbones in.

On the CPU, oneDNN runs convolutions faster on NHWC ("channels_last") tensors. Converting the 4-D weights is
enough: a convolution whose weight is channels_last returns a channels_last output, so the views need no
conversion. Measured side by side on 2 CPU cores, torch 2.14.1 (``benchmarks/memory_layout.py``, RESULTS.md
section 12): a resnet18 SimCLR step (fused AdamW) on 2 x 64 views of 32 px 1.17x faster in the median, the
EfficientNet-Lite0 teacher's forward at 64 px 1.27x. CUDA is left to the user (``"channels_last"``): PyTorch
recommends the layout with mixed precision on tensor cores, and nothing here measured it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def check_memory_format(choice: str) -> str:
    """``choice`` if it is one of :data:`MEMORY_FORMATS`, else a ValueError naming them.

    Example:
        >>> check_memory_format("auto")
        'auto'
    """
    if choice not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {choice!r}")
    return choice


def resolve_memory_format(choice: str, module: nn.Module, device: torch.device | str) -> str:
    """``"channels_last"`` or ``"contiguous"``: the layout ``module`` trains in on ``device``.

    ``"auto"`` is channels_last on a CPU for a convolutional module (two or more 2-D convolutions: a ViT's single
    patch convolution is left alone, its flatten would copy), else contiguous; the other choices are kept as given.
    ``SSLModule`` asks this of the student backbone and applies the answer to the whole method (heads, momentum
    copies, teacher).

    Example:
        >>> cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Flatten())
        >>> resolve_memory_format("auto", cnn, "cpu"), resolve_memory_format("auto", cnn, "cuda")
        ('channels_last', 'contiguous')
        >>> vit_stem = nn.Conv2d(3, 8, 16, 16)
        >>> resolve_memory_format("auto", vit_stem, "cpu"), resolve_memory_format("channels_last", cnn, "mps")
        ('contiguous', 'channels_last')
    """
    if check_memory_format(choice) != "auto":
        return choice
    convs = sum(isinstance(m, nn.Conv2d) for m in module.modules())
    return "channels_last" if convs >= 2 and torch.device(device).type == "cpu" else "contiguous"


def apply_memory_format(module: nn.Module, layout: str) -> nn.Module:
    """Put every 4-D parameter (and its gradient) and 4-D buffer of ``module`` in ``layout``, in place; the
    parameters stay the same objects, and tensors of other ranks (a Conv3d's 5-D weight) are left as they are.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv3d(8, 8, 1))
        >>> _ = apply_memory_format(net, "channels_last")
        >>> net[0].weight.is_contiguous(memory_format=torch.channels_last), net[0].weight.is_contiguous()
        (True, False)
        >>> net[1].weight.is_contiguous(), apply_memory_format(net, "contiguous")[0].weight.is_contiguous()
        (True, True)
    """
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def convert(t: Tensor) -> Tensor:
        return t.contiguous(memory_format=fmt) if t.dim() == 4 else t

    for sub in module.modules():
        for param in sub.parameters(recurse=False):
            param.data = convert(param.data)
            if param.grad is not None:
                param.grad = convert(param.grad)
        for name, buffer in sub.named_buffers(recurse=False):
            sub._buffers[name] = convert(buffer)
    return module


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter optimizer state tensor its parameter's strides (values kept).

    A checkpoint's state keeps the layout it was saved in, and torch's fused CPU kernels walk a parameter and its
    state by the same flat index: state saved contiguous and loaded for channels_last parameters would update each
    weight with another weight's moments. Registered as a ``load_state_dict`` post-hook by ``SSLModule``.

    Example:
        >>> w = nn.Parameter(torch.randn(2, 3, 2, 2).contiguous(memory_format=torch.channels_last))
        >>> opt = torch.optim.AdamW([w])
        >>> opt.state[w] = {"exp_avg": torch.arange(24.0).reshape(2, 3, 2, 2)}  # contiguous, as saved
        >>> match_state_layout(opt)
        >>> opt.state[w]["exp_avg"].stride() == w.stride(), opt.state[w]["exp_avg"][1, 2, 1, 0].item()
        (True, 22.0)
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (isinstance(value, Tensor) and value.shape == param.shape and value.dim() == param.dim() > 1
                        and value.stride() != param.stride()):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
