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
import re
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
        m.weight = _new_param(m.weight, c) if m.weight is not None else None
        m.bias = _new_param(m.bias, c) if m.bias is not None else None
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
        m.weight = _new_param(m.weight, c) if m.weight is not None else None
        m.bias = _new_param(m.bias, c) if m.bias is not None else None
    m.reset_parameters()


def _first_convs(model: nn.Module) -> Tuple[str, ...]:
    first = getattr(model, 'pretrained_cfg', {}).get('first_conv')
    if first:
        names = (first,) if isinstance(first, str) else tuple(first)
        return tuple(n[:-len('.weight')] if n.endswith('.weight') else n for n in names)
    return tuple(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))[:1]


def _layer_widths(model: nn.Module, in_chans: Sequence[int] = ()) -> set:
    """Every channel count a layer of ``model`` takes or gives (its widths), the image's channels left out."""
    widths = set()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            widths |= {m.in_channels, m.out_channels}
        elif isinstance(m, nn.Linear):
            widths |= {m.in_features, m.out_features}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            widths.add(m.num_features)
        elif isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
            widths.add(m.normalized_shape[0])
        elif isinstance(m, nn.GroupNorm):
            widths.add(m.num_channels)
    return {w for w in widths if w > 1} - set(in_chans)


def _shrink_rnn(m: nn.RNNBase, new_in: int, new_hidden: int) -> nn.RNNBase:
    """An RNN (Sequencer's LSTMs) of the same kind with the new input and hidden sizes, fresh weights."""
    return type(m)(new_in, new_hidden, num_layers=m.num_layers, bias=m.bias, batch_first=m.batch_first,
                   dropout=m.dropout, bidirectional=m.bidirectional,
                   device=m.weight_ih_l0.device, dtype=m.weight_ih_l0.dtype)


# Integer attributes that hold a width outside the layers (ReXNet's residual over part of the channels,
# FasterNet's partial conv, split sizes of token mixers, an attention's head_dim): by name, and only where
# the value is one of the model's widths (head_dim: any value, the heads are kept)
_WIDTH_ATTR = re.compile(r'(dim|chan|chs|features|width|split)', re.I)
_NOT_WIDTH_ATTR = re.compile(r'(num_heads|kernel|stride|level|window|patch|pos|token|group|ratio|layers|depth)', re.I)


def _is_width_attr(name: str) -> bool:
    return bool(_WIDTH_ATTR.search(name)) and not _NOT_WIDTH_ATTR.search(name)


def _shrink_int_attrs(m: nn.Module, widths: set, divisor: int) -> None:
    """Divide the widths a layer keeps in plain attributes; parts of one width (a split's sizes, two
    attributes that add up to a width) still add up to the divided width."""
    ints = {k: v for k, v in vars(m).items() if type(v) is int and v > 1 and _is_width_attr(k)}
    new = {k: math.ceil(v / divisor) for k, v in ints.items() if v in widths or k == 'head_dim'}
    for a in ints:  # parts of one width (FasterNet's dim_conv3 + dim_untouched): the larger takes the rest
        for b in ints:
            if a < b and ints[a] + ints[b] in widths:
                small, large = (a, b) if ints[a] <= ints[b] else (b, a)
                new.setdefault(small, math.ceil(ints[small] / divisor))
                new[large] = math.ceil((ints[a] + ints[b]) / divisor) - new[small]
    for k, v in new.items():
        setattr(m, k, v)
    for k, v in list(vars(m).items()):
        if isinstance(v, (tuple, list)) and len(v) > 1 and all(type(i) is int for i in v) and _is_width_attr(k) \
                and sum(v) in widths:
            parts = [math.ceil(i / divisor) for i in v]
            big = max(range(len(v)), key=lambda i: v[i])
            parts[big] += math.ceil(sum(v) / divisor) - sum(parts)
            setattr(m, k, type(v)(parts))


_LAYER_TENSORS = {'weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'}


def _rewrite_narrow(model: nn.Module, divisor: int, in_chans: int, model_name: str) -> nn.Module:
    """Deep-copy ``model`` and resize every layer in place; weights start fresh."""
    narrow = copy.deepcopy(model)
    if hasattr(narrow, 'reset_classifier'):
        narrow.reset_classifier(0)
    first = _first_convs(narrow)
    widths = _layer_widths(narrow, [m.in_channels for n, m in narrow.named_modules()
                                    if n in first and isinstance(m, nn.Conv2d)])
    kept = []  # tensors left as they are: named if the copy then fails there
    mixed = set()  # convs of a MixedConv2d: sized by their parent's channel split
    for name, m in list(narrow.named_modules()):
        div = lambda c, n=name: _divide(c, divisor, n)  # noqa: E731
        if name in mixed:
            continue
        layer = True
        if isinstance(m, MixedConv2d):
            _shrink_mixed(m, in_chans if name in first else div(m.in_channels), div(m.out_channels))
            mixed.update(f'{name}.{k}' for k in m.keys())
        elif isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            _shrink_conv(m, in_chans if name in first else div(m.in_channels), div(m.out_channels))
            if isinstance(getattr(m, 'scale', None), float):  # weight-standardised (ScaledStdConv2d): gamma/sqrt(fan_in)
                m.scale *= math.sqrt(fan_in / m.weight[0].numel())
        elif isinstance(m, nn.Linear):
            _shrink_linear(m, div(m.in_features), div(m.out_features))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            _shrink_batchnorm(m, div(m.num_features))
        elif isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
            _shrink_layernorm(m, div(m.normalized_shape[0]))
        elif isinstance(m, nn.GroupNorm):
            _shrink_groupnorm(m, div(m.num_channels))
        elif isinstance(m, nn.RNNBase):
            parent, _, attr = name.rpartition('.')
            setattr(narrow.get_submodule(parent), attr, _shrink_rnn(m, div(m.input_size), div(m.hidden_size)))
            continue
        else:
            layer = False
        kept += _shrink_per_channel(m, name, divisor, widths, skip=_LAYER_TENSORS if layer else ())
        if not layer:
            _shrink_int_attrs(m, widths, divisor)
    narrow._wae_kept = kept
    return narrow


def _shrink_per_channel(m: nn.Module, name: str, divisor: int, widths: set, skip: Sequence[str] = ()) -> List[str]:
    """The layer's other parameters and buffers: every dimension whose size is one of the model's widths
    is divided (layer scale ``gamma``, per-channel scales and offsets, per-channel fixed filters such as
    BlurPool's, positional tables [1, N, C], a weight-standardised conv's gain), keeping the first entries,
    so the family's own initialisation (a constant, a fixed filter, a random table) is kept. A tensor with
    no such dimension does not scale with the width (a scalar, a table per attention head) and passes
    unchanged; the descriptions of those with more than one value are returned, to name them if the copy
    then does not run."""
    kept = []
    own = [(n, p) for n, p in m.named_parameters(recurse=False) if n not in skip]
    own += [(n, b) for n, b in m.named_buffers(recurse=False) if b is not None and n not in skip]
    for attr, tensor in own:
        dims = [d for d, n in enumerate(tensor.shape) if n in widths]
        if not dims:
            if tensor.numel() > 1 and tensor.is_floating_point():  # (an integer index is named by its table)
                kept.append(f'layer {name or "<root>"!r} ({type(m).__name__}) holds {attr} of shape '
                            f'{tuple(tensor.shape)}, which is not one value per channel, kept as it is')
            continue
        new = tensor.detach()
        for d in dims:
            new = new.narrow(d, 0, _divide(tensor.shape[d], divisor, f'{name}.{attr}'))
        new = new.clone()
        if len(tensor.shape) > 1 and tensor.numel() > max(tensor.shape):  # a table, not a per-channel vector
            kept.append(f'layer {name or "<root>"!r} ({type(m).__name__}) holds {attr} of shape '
                        f'{tuple(tensor.shape)}, resized to {tuple(new.shape)} as widths')
        if isinstance(tensor, nn.Parameter):
            setattr(m, attr, nn.Parameter(new, requires_grad=tensor.requires_grad))
        else:
            setattr(m, attr, new)
    return kept



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


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f'{type(e).__name__}: {text[0] if text else ""}'[:300]


def run_named(model: nn.Module, fn: Callable[[], torch.Tensor]
              ) -> Tuple[Optional[torch.Tensor], str, Optional[BaseException], set]:
    """``fn()`` in eval mode without gradients: (output, '', None, the layers that ran) or (None, the
    innermost layer that was running, the exception, the layers that ran). The training mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _trace_calls(model) as (stack, called):
            try:
                return fn(), '', None, called
            except Exception as e:  # noqa: BLE001 - any failure inside (RuntimeError, AssertionError, ...)
                return None, (stack[-1] if stack else '') or '<root>', e, called
    finally:
        model.train(was_training)


def _sample_forward(model: nn.Module, in_chans: int, size: Sequence[int]) -> torch.Tensor:
    p = next(model.parameters())
    x = torch.randn(2, in_chans, *size, device=p.device, dtype=p.dtype)
    return model.forward_features(x)


def _verify(narrow: nn.Module, in_chans: int, size: Sequence[int], model_name: str) -> Tuple[int, set]:
    out, layer, e, called = run_named(narrow, lambda: _sample_forward(narrow, in_chans, size))
    if e is not None:
        kept = [k for k in getattr(narrow, '_wae_kept', ()) if layer == '<root>' or
                k.startswith(f"layer {layer!r}") or f"layer '{layer}." in k]
        token = any(t in k for k in kept for t in ('token', 'pos_embed', 'rel_pos', 'relative_position', 'attention_bias'))
        hint = (' Token models without a width argument in their constructor (VisionTransformer has one) cannot be '
                'shrunk generically.' if token else ' This family cannot be shrunk generically.')
        why = f' ({"; ".join(kept[:4])})' if kept else ''
        raise ShrinkError(
            f'the quarter-width copy of {model_name} does not run: layer {layer!r} failed on a '
            f'{in_chans}x{size[0]}x{size[1]} input{why}: {_first_line(e)}.{hint} Use ih_fusion=\'stem\', '
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
    _check_divisor(divisor)
    if not callable(getattr(backbone, 'forward_features', None)):
        raise TypeError(f'the backbone must be a timm-style model with forward_features(), '
                        f'got {type(backbone).__name__}')
    model_name = getattr(backbone, 'pretrained_cfg', {}).get('architecture') or type(backbone).__name__
    p = next(backbone.parameters())
    narrow = _rebuild_narrow(backbone, divisor, in_chans)
    if narrow is None:
        narrow = _rewrite_narrow(backbone, divisor, in_chans, model_name)  # a width that cannot be divided: raises
        narrow._wae_layout = layout
        try:
            channels, called = _verify(narrow.to(device=p.device, dtype=p.dtype), in_chans, sample_size, model_name)
        except ShrinkError as refusal:  # the rewritten copy does not run: the family's constructor, where it has one
            try:
                narrow = _rebuild_narrow(backbone, divisor, in_chans, FALLBACK_WIDTH_ARGS)
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


# ----------------------------------------------------------------------------- construction checks
# WAEWrapper builds its networks for IL (half the image), checks them with one forward each and refuses, by
# layer and reason, what does not run: never a failure at the first forward.

def il_sizes(image_size: Sequence[int], grid: Optional[Sequence[int]] = None,
             reduction: int = 2) -> List[Tuple[int, int]]:
    """IL sizes to try, best first: the backbone's image over the front end's reduction (IL of its usual
    input); that rounded up to a multiple of 64 (HRNet, DLA and windowed attention need one); a fixed token
    grid's; the backbone's own size (a grid that does not shrink: the WAE model then takes larger images)."""
    sizes = [tuple(math.ceil(s / reduction) for s in image_size),
             tuple(64 * max(math.ceil(s / (64 * reduction)), 1) for s in image_size)]
    sizes += ([tuple(grid)] if grid else []) + [tuple(image_size)]
    return list(dict.fromkeys(tuple(int(s) for s in size) for size in sizes))


def feature_layout(out: torch.Tensor, num_features: int, model_name: str) -> str:
    """'NCHW', 'NHWC' (Swin, MambaOut) or 'NLC' (tokens, with or without prefix tokens) from one output."""
    if not isinstance(out, torch.Tensor):
        raise ShrinkError(f'{model_name}.forward_features returns a {type(out).__name__}, not one tensor; WAEWrapper '
                          f'needs NCHW or NHWC maps or [B, tokens, C] tokens to join IL and IH')
    if out.ndim == 3:
        return 'NLC'
    if out.ndim == 4:
        return 'NHWC' if out.shape[1] != num_features and out.shape[-1] == num_features else 'NCHW'
    raise ShrinkError(f'{model_name}.forward_features returns shape {tuple(out.shape)}; WAEWrapper needs NCHW or NHWC '
                      f'maps or [B, tokens, C] tokens to join IL and IH')


def probe_backbone(make: Callable[[Optional[Tuple[int, int]]], nn.Module], sizes: Sequence[Tuple[int, int]],
                   in_chans: int, model_name: str) -> Tuple[nn.Module, Tuple[int, int], str, List[str]]:
    """The first IL size in ``sizes`` at which the backbone runs: (backbone, size, layout, the convs that read
    the input). ``make(size)`` gives the backbone for a size (rebuilt for a fixed grid, else the same one)."""
    tried = []
    for size in sizes:
        try:
            backbone = make(size)
        except Exception as e:  # noqa: BLE001 - a fixed grid that cannot be built for this size (an assert)
            tried.append(f'{size[0]}x{size[1]} (cannot be built for it: {_first_line(e)})')
            continue
        p = next(backbone.parameters())
        x = torch.zeros(1, in_chans, *size, device=p.device, dtype=p.dtype)
        readers: List[str] = []
        hooks = [m.register_forward_pre_hook(lambda _m, inp, n=n: readers.append(n) if inp and inp[0] is x else None)
                 for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
        try:
            out, layer, e, _ = run_named(backbone, lambda: backbone.forward_features(x))
        finally:
            for h in hooks:
                h.remove()
        if e is None:
            return backbone, size, feature_layout(out, getattr(backbone, 'num_features', -1), model_name), readers
        tried.append(f'{size[0]}x{size[1]} (layer {layer!r}: {_first_line(e)})')
    raise ShrinkError(f'{model_name} does not run on IL (half the image) at any size tried: ' + '; '.join(tried))


def widen_input(backbone: nn.Module, extra_chans: int, readers: Sequence[str], model_name: str) -> Tuple[str, ...]:
    """Give every layer that reads the backbone's input ``extra_chans`` more input channels with zero weights,
    in place: the convs that pretrained_cfg['first_conv'] names and any other conv that reads the same input
    (every branch of a reparameterisable stem, MobileOneBlock or RepVggBlock). The layers keep their class
    (a weight-standardised or 'same'-padded conv stays one). A trained backbone keeps its function on IL.
    Returns the names of the widened convs."""
    first = getattr(backbone, 'pretrained_cfg', {}).get('first_conv')
    named = (first,) if isinstance(first, str) else tuple(first or ())
    names = list(dict.fromkeys([n[:-len('.weight')] if n.endswith('.weight') else n for n in named] + list(readers)))
    modules = dict(backbone.named_modules())
    missing = [n for n in named if n not in modules]
    if missing or not names:
        raise ShrinkError(
            f"ih_fusion='stem' needs the backbone's first conv (pretrained_cfg['first_conv']) to be a plain nn.Conv2d; "
            f"{model_name!r} has none at {missing[0] if missing else first!r}: use ih_fusion='branch'")
    for name in names:
        conv = modules[name]
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            what = type(conv).__name__ + (f' with groups={conv.groups}' if isinstance(conv, nn.Conv2d) else '')
            raise ShrinkError(
                f"ih_fusion='stem' needs the layers that read the image to be plain nn.Conv2d; {model_name!r} has "
                f"{what} at {name!r}: use ih_fusion='branch'")
    for name in names:
        conv = modules[name]
        old = conv.in_channels
        weight = torch.zeros(conv.out_channels, old + extra_chans, *conv.kernel_size,
                             dtype=conv.weight.dtype, device=conv.weight.device)
        with torch.no_grad():
            weight[:, :old] = conv.weight
        conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
        conv.in_channels = old + extra_chans
        parts = name.split('.')
        for i in range(1, len(parts)):  # the blocks around it that keep their input width (reparameterisation)
            block = modules['.'.join(parts[:i])]
            for attr in ('in_chs', 'in_channels', 'in_chans'):
                if vars(block).get(attr) == old:
                    setattr(block, attr, old + extra_chans)
    return tuple(names)


def check_runs(model: nn.Module, x: torch.Tensor, expected: Optional[Tuple[int, ...]], what: str) -> None:
    """One forward of the built model at construction; a failure is a ShrinkError naming the layer."""
    out, layer, e, _ = run_named(model, lambda: model(x))
    if e is not None:
        raise ShrinkError(f'{what} does not run on a {"x".join(map(str, x.shape[1:]))} image: layer {layer!r} '
                          f'failed ({_first_line(e)})') from e
    if expected is not None and tuple(out.shape) != tuple(expected):
        raise ShrinkError(f'{what} gives an output of shape {tuple(out.shape)} for a '
                          f'{"x".join(map(str, x.shape[1:]))} image, not {tuple(expected)}')
