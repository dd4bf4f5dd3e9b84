"""The IH branch: a copy of a backbone's feature extractor with every width divided by 4.

Families with width arguments are rebuilt through timm's own constructors (VGG ``cfg``,
ConvNeXt ``dims``, DenseNet ``growth_rate``), which keeps their initialisation and any layer
that scales with width (ConvNeXt's layer-scale). Everything else goes through a generic rewrite
of a deep copy that resizes each Conv2d / Linear / norm layer and per-channel parameter (layer
scale). Where the rewritten copy does not run because a width is stored outside the layers
(Res2Net, EdgeNeXt, CSPNet), the family's constructor is used instead. Token models are rebuilt
through their constructor's ``embed_dim`` (VisionTransformer) at the backbone's token grid. Either way the result is
checked with a forward pass, so an unsupported layer fails here, by name, and not at training time.
"""
from typing import Sequence, Tuple

import torch
from torch import nn

from ..util import ShrinkError, first_line
from .constructors import FALLBACK_WIDTH_ARGS, check_divisor, rebuild_narrow
from .probe import run_named
from .rewrite import rewrite_narrow

__all__ = ['shrink_width', 'narrow_features']


def _sample_forward(model: nn.Module, in_chans: int, size: Sequence[int]) -> torch.Tensor:
    p = next(model.parameters())
    x = torch.randn(2, in_chans, *size, device=p.device, dtype=p.dtype)
    return model.forward_features(x)


def _verify(narrow: nn.Module, in_chans: int, size: Sequence[int], model_name: str) -> Tuple[int, set]:
    out, layer, e, called = run_named(narrow, lambda: _sample_forward(narrow, in_chans, size))
    if e is not None:
        kept = [k for k in getattr(narrow, '_wae_kept', ()) if layer == '<root>' or
                k.startswith(f"layer {layer!r}") or f"layer '{layer}." in k]
        token = any(t in k for k in kept
                    for t in ('token', 'pos_embed', 'rel_pos', 'relative_position', 'attention_bias'))
        hint = (' Token models without a width argument in their constructor (VisionTransformer has one) cannot be '
                'shrunk generically.' if token else ' This family cannot be shrunk generically.')
        why = f' ({"; ".join(kept[:4])})' if kept else ''
        raise ShrinkError(
            f'the quarter-width copy of {model_name} does not run: layer {layer!r} failed on a '
            f'{in_chans}x{size[0]}x{size[1]} input{why}: {first_line(e)}.{hint} Use ih_fusion=\'stem\', '
            f'which needs no second network.') from e
    if out.ndim not in (3, 4):
        raise ShrinkError(f'{model_name}.forward_features must return NCHW maps or [B, tokens, C] tokens, got shape '
                          f'{tuple(out.shape)}')
    if out.ndim == 3 or out.shape[1] != narrow_features(narrow, out):
        return out.shape[-1], called
    return out.shape[1], called


def narrow_features(narrow: nn.Module, out: torch.Tensor) -> int:
    """The channel count of a 4-D feature map: NCHW, or NHWC (Swin) where the last dimension is the width."""
    if out.ndim == 4 and getattr(narrow, '_wae_layout', 'NCHW') == 'NHWC':
        return out.shape[-1]
    return out.shape[1]


def _drop_unused(narrow: nn.Module, called: set, in_chans: int, size: Sequence[int]) -> None:
    """Replace the layers forward_features never runs (heads such as VGG's pre_logits); kept where the copy
    then does not run (a layer whose weights are used without calling it, as BEiT's qkv)."""
    dropped = []
    for name, m in list(narrow.named_modules()):
        if name and name not in called and any(True for _ in m.parameters(recurse=False)):
            parent_name, _, attr = name.rpartition('.')
            parent = narrow.get_submodule(parent_name)
            dropped.append((parent, attr, m))
            setattr(parent, attr, nn.Identity())
    if dropped and run_named(narrow, lambda: _sample_forward(narrow, in_chans, size))[2] is not None:
        for parent, attr, m in dropped:
            setattr(parent, attr, m)


def shrink_width(
        backbone: nn.Module,
        divisor: int = 4,
        in_chans: int = 3,
        sample_size: Sequence[int] = (64, 64),
        layout: str = 'NCHW',
) -> Tuple[nn.Module, int]:
    """Return (narrow feature extractor, its output channels). Weights start fresh.

    ``in_chans`` is the IH input's channel count (3 for the WAE, 9 for the DWT's details).
    Use the narrow model through ``forward_features`` only; its classifier is removed.
    ``layout`` is that of the backbone's features ('NCHW', 'NHWC' or 'NLC' tokens; ``probe_backbone``).
    """
    check_divisor(divisor)
    if not callable(getattr(backbone, 'forward_features', None)):
        raise TypeError(f'the backbone must be a timm-style model with forward_features(), '
                        f'got {type(backbone).__name__}')
    model_name = getattr(backbone, 'pretrained_cfg', {}).get('architecture') or type(backbone).__name__
    p = next(backbone.parameters())
    narrow = rebuild_narrow(backbone, divisor, in_chans)
    if narrow is None:
        narrow = rewrite_narrow(backbone, divisor, in_chans, model_name)  # a width that cannot be divided: raises
        narrow._wae_layout = layout
        try:
            channels, called = _verify(narrow.to(device=p.device, dtype=p.dtype), in_chans, sample_size, model_name)
        except ShrinkError as refusal:  # the rewritten copy does not run: the family's constructor, where it has one
            try:
                narrow = rebuild_narrow(backbone, divisor, in_chans, FALLBACK_WIDTH_ARGS)
            except Exception:  # noqa: BLE001 - a changed model the constructor cannot describe: the first reason
                raise refusal from None
            if narrow is None:
                raise
            narrow._wae_layout = layout
            channels, called = _verify(narrow.to(device=p.device, dtype=p.dtype), in_chans, sample_size, model_name)
    else:
        narrow._wae_layout = layout
        channels, called = _verify(narrow.to(device=p.device, dtype=p.dtype), in_chans, sample_size, model_name)
    _drop_unused(narrow, called, in_chans, sample_size)
    narrow.num_features = narrow.head_hidden_size = channels
    for attr in ('_wae_kept', '_wae_layout'):
        if hasattr(narrow, attr):
            delattr(narrow, attr)
    return narrow, channels
