"""Build the IH branch: a copy of a backbone's feature extractor with every width divided by 4.

Families with width arguments are rebuilt through timm's own constructors (VGG ``cfg``,
ConvNeXt ``dims``, DenseNet ``growth_rate``), which keeps their initialisation and any layer
that scales with width (ConvNeXt's layer-scale). Everything else goes through a generic rewrite
of a deep copy that resizes each Conv2d / Linear / norm layer and per-channel parameter (layer
scale). Where the rewritten copy does not run because a width is stored outside the layers
(Res2Net, EdgeNeXt, CSPNet), the family's constructor is used instead. Token models are rebuilt
through their constructor's ``embed_dim`` (VisionTransformer) at the backbone's token grid. Either way the result is
checked with a forward pass, so an unsupported layer fails here, by name, and not at training time.
"""
import copy
import math
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import timm
import torch
from timm.models.convnext import ConvNeXt
from timm.models.cspnet import CspNet
from timm.models.cspnet import model_cfgs as cspnet_cfgs
from timm.models.densenet import DenseNet
from timm.models.edgenext import EdgeNeXt
from timm.models.resnet import ResNet
from timm.models.vgg import VGG
from timm.models.vision_transformer import VisionTransformer
from timm.layers.mixed_conv2d import MixedConv2d
from torch import nn

__all__ = ['shrink_width', 'ShrinkError']


class ShrinkError(ValueError):
    """The backbone has a layer that the width rewrite cannot divide."""


def _check_divisor(divisor: int) -> None:
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1:
        raise ValueError(f'width_divisor must be a positive integer (the paper uses 4), got {divisor!r}')


def _divide(channels: int, divisor: int, layer: str) -> int:
    if channels < divisor:
        raise ShrinkError(
            f'layer {layer!r} has {channels} channels, which cannot be divided by width_divisor={divisor}')
    return math.ceil(channels / divisor)


# ----------------------------------------------------------------------------- constructor path

def _vgg_args(model: VGG, d: int) -> dict:
    cfg = ['M' if isinstance(m, nn.MaxPool2d) else _divide(m.out_channels, d, f'features.{i}')
           for i, m in enumerate(model.features) if isinstance(m, (nn.MaxPool2d, nn.Conv2d))]
    norm = next((type(m) for m in model.features if isinstance(m, nn.BatchNorm2d)), None)
    return dict(cfg=cfg, norm_layer=norm)


def _convnext_args(model: ConvNeXt, d: int) -> dict:
    return dict(dims=tuple(_divide(f['num_chs'], d, f['module']) for f in model.feature_info))


def _densenet_args(model: DenseNet, d: int) -> dict:
    growth = model.features.denseblock1.denselayer1.conv2.out_channels
    return dict(growth_rate=_divide(growth, d, 'features.denseblock1.denselayer1.conv2'))


def _resnet_args(model: ResNet, d: int) -> dict:
    """Planes per stage and stem width: what Res2Net's per-scale splits are derived from."""
    planes = []
    for i in range(1, 5):
        block = getattr(model, f'layer{i}')[0]
        last = block.conv3 if hasattr(block, 'conv3') else block.conv2
        planes.append(_divide(last.out_channels // getattr(block, 'expansion', 1), d, f'layer{i}.0'))
    stem = model.conv1 if isinstance(model.conv1, nn.Conv2d) else model.conv1[0]
    return dict(channels=tuple(planes), stem_width=_divide(stem.out_channels, d, 'conv1'))


def _edgenext_args(model: EdgeNeXt, d: int) -> dict:
    """dims divided, rounded up to a multiple of the attention heads (4 in every EdgeNeXt)."""
    return dict(dims=tuple(4 * math.ceil(_divide(f['num_chs'], d, f['module']) / 4) for f in model.feature_info))


def _cspnet(model: CspNet, arch: str, d: int, in_chans: int) -> nn.Module:
    """CspNet takes its widths as a config dataclass: the stem's and the stages' out_chs divided."""
    cfg = cspnet_cfgs[arch]
    stem_out = cfg.stem.out_chs
    stem_out = tuple(_divide(c, d, 'stem') for c in stem_out) if isinstance(stem_out, tuple) else _divide(stem_out, d, 'stem')
    cfg = replace(cfg, stem=replace(cfg.stem, out_chs=stem_out),
                  stages=replace(cfg.stages, out_chs=tuple(_divide(c, d, 'stages') for c in cfg.stages.out_chs)))
    return CspNet(cfg=cfg, in_chans=in_chans, num_classes=0)


def _vit_args(model: VisionTransformer, d: int) -> dict:
    """embed_dim divided, rounded up to a multiple of the heads (kept, so each head narrows too); the
    token grid of the backbone (built for the half-size input), so IL's and IH's tokens line up."""
    heads = model.blocks[0].attn.num_heads if len(model.blocks) else 1
    return dict(embed_dim=heads * math.ceil(_divide(model.embed_dim, d, 'patch_embed.proj') / heads),
                num_heads=heads, img_size=model.patch_embed.img_size)


# Families whose timm constructor takes the widths; the value maps a model to the width kwargs.
WIDTH_ARGS: Dict[Type[nn.Module], Callable[[nn.Module, int], dict]] = {
    VGG: _vgg_args,
    ConvNeXt: _convnext_args,
    DenseNet: _densenet_args,
    VisionTransformer: _vit_args,
}
# Families the generic rewrite handles except where a width is stored outside the layers (Res2Net's
# per-scale splits, EdgeNeXt's positional encoding, CSPNet's split points): when the rewritten copy
# does not run, they are rebuilt through these instead.
FALLBACK_WIDTH_ARGS: Dict[Type[nn.Module], Callable[[nn.Module, int], dict]] = {
    ResNet: _resnet_args,
    EdgeNeXt: _edgenext_args,
}


def _rebuild_narrow(model: nn.Module, divisor: int, in_chans: int,
                    table: Dict[Type[nn.Module], Callable[[nn.Module, int], dict]] = WIDTH_ARGS) -> Optional[nn.Module]:
    """Rebuild through the constructor when the family supports it, else None."""
    arch = getattr(model, 'pretrained_cfg', {}).get('architecture')
    if table is FALLBACK_WIDTH_ARGS and isinstance(model, CspNet) and arch in cspnet_cfgs:
        return _cspnet(model, arch, divisor, in_chans)
    width_fn = next((table[c] for c in type(model).__mro__ if c in table), None)  # subclasses too (DeiT)
    if width_fn is None:
        return None
    width_args = width_fn(model, divisor)
    if isinstance(model, VGG):
        conv = model.features[0]
        return VGG(conv_layer=type(conv), num_classes=0, in_chans=in_chans, **width_args)
    if arch is None:
        return None
    kwargs = {k: v for k, v in getattr(model, '_model_args', {}).items()
              if k not in ('num_classes', 'in_chans', 'pretrained', 'global_pool')}
    kwargs.update(width_args)
    return timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)


# ----------------------------------------------------------------------------- generic rewrite

def _new_param(like: nn.Parameter, *shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=like.dtype, device=like.device),
                        requires_grad=like.requires_grad)


def _shrink_conv(m: nn.Conv2d, new_in: int, new_out: int) -> None:
    g = m.groups
    if g == 1:
        new_g = 1
    elif g == m.in_channels:  # depthwise (possibly with a channel multiplier)
        new_g = new_in
    elif new_in % g == 0 and new_out % g == 0:
        new_g = g
    else:
        new_g = math.gcd(new_in, new_out, g)
    m.in_channels, m.out_channels, m.groups = new_in, new_out, new_g
    m.weight = _new_param(m.weight, new_out, new_in // new_g, *m.kernel_size)
    if m.bias is not None:
        m.bias = _new_param(m.bias, new_out)
    m.reset_parameters()


def _split_channels(channels: int, groups: int) -> List[int]:
    """MixedConv2d's split: equal parts, the remainder on the first (as its constructor does)."""
    split = [channels // groups] * groups
    split[0] += channels - sum(split)
    return split


def _shrink_mixed(m: MixedConv2d, new_in: int, new_out: int) -> None:
    """MixNet's mixed-kernel conv splits its channels between kernels: split the new widths the
    way its constructor does, so the splits still add up to the input's channels."""
    convs = list(m.values())
    in_splits, out_splits = _split_channels(new_in, len(convs)), _split_channels(new_out, len(convs))
    if min(in_splits + out_splits) < 1:
        raise ShrinkError(f'a mixed conv of {len(convs)} kernels cannot split {new_in} -> {new_out} channels')
    for conv, i, o in zip(convs, in_splits, out_splits):
        _shrink_conv(conv, i, o)
    m.in_channels, m.out_channels, m.splits = new_in, new_out, in_splits


def _shrink_linear(m: nn.Linear, new_in: int, new_out: int) -> None:
    m.in_features, m.out_features = new_in, new_out
    m.weight = _new_param(m.weight, new_out, new_in)
    if m.bias is not None:
        m.bias = _new_param(m.bias, new_out)
    m.reset_parameters()


def _shrink_batchnorm(m: nn.modules.batchnorm._BatchNorm, c: int) -> None:
    m.num_features = c
    if m.affine:
        m.weight, m.bias = _new_param(m.weight, c), _new_param(m.bias, c)
    if m.track_running_stats:
        m.running_mean = torch.zeros(c, device=m.running_mean.device)
        m.running_var = torch.ones(c, device=m.running_var.device)
    m.reset_parameters()


def _shrink_layernorm(m: nn.LayerNorm, c: int) -> None:
    m.normalized_shape = (c,)
    if m.weight is not None:
        m.weight = _new_param(m.weight, c)
    if getattr(m, 'bias', None) is not None:
        m.bias = _new_param(m.bias, c)
    m.reset_parameters()


def _shrink_groupnorm(m: nn.GroupNorm, c: int) -> None:
    g = m.num_groups
    m.num_groups = c if g == m.num_channels else (g if c % g == 0 else math.gcd(c, g))
    m.num_channels = c
    if m.affine:
        m.weight, m.bias = _new_param(m.weight, c), _new_param(m.bias, c)
    m.reset_parameters()


def _first_convs(model: nn.Module) -> Tuple[str, ...]:
    first = getattr(model, 'pretrained_cfg', {}).get('first_conv')
    if first:
        names = (first,) if isinstance(first, str) else tuple(first)
        return tuple(n[:-len('.weight')] if n.endswith('.weight') else n for n in names)
    return tuple(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))[:1]


def _rewrite_narrow(model: nn.Module, divisor: int, in_chans: int, model_name: str) -> nn.Module:
    """Deep-copy ``model`` and resize every layer in place; weights start fresh."""
    narrow = copy.deepcopy(model)
    if hasattr(narrow, 'reset_classifier'):
        narrow.reset_classifier(0)
    first = _first_convs(narrow)
    mixed = set()  # convs of a MixedConv2d: sized by their parent's channel split
    for name, m in narrow.named_modules():
        div = lambda c, n=name: _divide(c, divisor, n)  # noqa: E731
        if name in mixed:
            continue
        if isinstance(m, MixedConv2d):
            _shrink_mixed(m, in_chans if name in first else div(m.in_channels), div(m.out_channels))
            mixed.update(f'{name}.{k}' for k in m.keys())
        elif isinstance(m, nn.Conv2d):
            _shrink_conv(m, in_chans if name in first else div(m.in_channels), div(m.out_channels))
        elif isinstance(m, nn.Linear):
            _shrink_linear(m, div(m.in_features), div(m.out_features))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            _shrink_batchnorm(m, div(m.num_features))
        elif isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
            _shrink_layernorm(m, div(m.normalized_shape[0]))
        elif isinstance(m, nn.GroupNorm):
            _shrink_groupnorm(m, div(m.num_channels))
        else:
            _shrink_per_channel(m, name, divisor, model_name)
    return narrow


def _shrink_per_channel(m: nn.Module, name: str, divisor: int, model_name: str) -> None:
    """Per-channel parameters of any other layer (layer scale ``gamma``, per-channel scales and
    offsets: one value per channel along one axis) take the new width, filled with their mean
    (a constant at initialisation, so the family's own init is kept). Anything else is an error
    that names the layer."""
    own = [(n, p) for n, p in m.named_parameters(recurse=False)]
    own += [(n, b) for n, b in m.named_buffers(recurse=False) if b is not None and b.numel() > 1]
    for attr, tensor in own:
        channel_dims = [d for d, n in enumerate(tensor.shape) if n > 1]
        if len(channel_dims) != 1:
            token = any(t in attr for t in ('token', 'pos_embed', 'rel_pos', 'relative_position', 'attention_bias'))
            hint = (' Token models without a width argument in their constructor (VisionTransformer has one) '
                    'cannot be shrunk generically.' if token else
                    ' Pass a backbone whose constructor takes widths, or another width_divisor.')
            raise ShrinkError(
                f'cannot divide the width of {model_name}: layer {name or "<root>"!r} ({type(m).__name__}) holds '
                f'{attr} of shape {tuple(tensor.shape)}, which is not one value per channel.{hint}')
        d = channel_dims[0]
        shape = list(tensor.shape)
        shape[d] = _divide(shape[d], divisor, f'{name}.{attr}')
        new = torch.full(shape, tensor.detach().float().mean().item(), dtype=tensor.dtype, device=tensor.device)
        if isinstance(tensor, nn.Parameter):
            setattr(m, attr, nn.Parameter(new, requires_grad=tensor.requires_grad))
        else:
            setattr(m, attr, new)


# ----------------------------------------------------------------------------- verification

@contextmanager
def _trace_calls(model: nn.Module) -> Iterator[Tuple[List[str], set]]:
    """Record the stack of modules being run (to name a failing layer) and which ran at all."""
    stack: List[str] = []
    called: set = set()
    handles = []
    for name, m in model.named_modules():
        def pre(_m, _inp, n=name):
            stack.append(n)
            called.add(n)

        def post(_m, _inp, _out):
            stack.pop()
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        yield stack, called
    finally:
        for h in handles:
            h.remove()


def _sample_forward(model: nn.Module, in_chans: int, size: Sequence[int]) -> torch.Tensor:
    p = next(model.parameters())
    x = torch.randn(2, in_chans, *size, device=p.device, dtype=p.dtype)
    return model.forward_features(x)


def _verify(narrow: nn.Module, in_chans: int, size: Sequence[int], model_name: str) -> Tuple[int, set]:
    was_training = narrow.training
    narrow.eval()
    with torch.no_grad(), _trace_calls(narrow) as (stack, called):
        try:
            out = _sample_forward(narrow, in_chans, size)
        except Exception as e:  # noqa: BLE001 - any failure inside the copy (RuntimeError, ValueError, ...)
            layer = stack[-1] if stack else '<root>'
            raise ShrinkError(
                f'the quarter-width copy of {model_name} does not run: layer {layer!r} failed on a '
                f'{in_chans}x{size[0]}x{size[1]} input ({type(e).__name__}: {e}). This family cannot be shrunk '
                f'generically.') from e
    narrow.train(was_training)
    if out.ndim not in (3, 4):
        raise ShrinkError(f'{model_name}.forward_features must return NCHW maps or [B, tokens, C] tokens, got shape '
                          f'{tuple(out.shape)}')
    if out.ndim == 3:
        return out.shape[-1], called
    return out.shape[1], called


def _drop_unused(narrow: nn.Module, called: set) -> None:
    """Replace the layers forward_features never runs (heads such as VGG's pre_logits)."""
    for name, m in list(narrow.named_modules()):
        if name and name not in called and any(True for _ in m.parameters(recurse=False)):
            parent_name, _, attr = name.rpartition('.')
            setattr(narrow.get_submodule(parent_name), attr, nn.Identity())


def shrink_width(
        backbone: nn.Module,
        divisor: int = 4,
        in_chans: int = 3,
        sample_size: Sequence[int] = (64, 64),
) -> Tuple[nn.Module, int]:
    """Return (narrow feature extractor, its output channels). Weights start fresh.

    ``in_chans`` is the IH input's channel count (3 for the WAE, 9 for the DWT's details).
    Use the narrow model through ``forward_features`` only; its classifier is removed.
    """
    _check_divisor(divisor)
    if not callable(getattr(backbone, 'forward_features', None)):
        raise TypeError(f'the backbone must be a timm-style model with forward_features(), '
                        f'got {type(backbone).__name__}')
    model_name = getattr(backbone, 'pretrained_cfg', {}).get('architecture') or type(backbone).__name__
    p = next(backbone.parameters())
    narrow = _rebuild_narrow(backbone, divisor, in_chans)
    if narrow is None:
        narrow = _rewrite_narrow(backbone, divisor, in_chans, model_name)  # a width that cannot be divided: raises
        try:
            channels, called = _verify(narrow.to(device=p.device, dtype=p.dtype), in_chans, sample_size, model_name)
        except ShrinkError:  # the rewritten copy does not run: the family's constructor, where it has one
            narrow = _rebuild_narrow(backbone, divisor, in_chans, FALLBACK_WIDTH_ARGS)
            if narrow is None:
                raise
            channels, called = _verify(narrow.to(device=p.device, dtype=p.dtype), in_chans, sample_size, model_name)
    else:
        channels, called = _verify(narrow.to(device=p.device, dtype=p.dtype), in_chans, sample_size, model_name)
    _drop_unused(narrow, called)
    narrow.num_features = narrow.head_hidden_size = channels
    return narrow, channels
