"""The quarter-width copy by a generic rewrite of a deep copy: every layer and per-channel tensor resized.

It works by mechanism, not by family: a tensor whose dimensions are not widths of the model passes
unchanged; every dimension that is a width is divided; widths kept in plain attributes are divided with them.
"""
import copy
import math
import re
from typing import List, Sequence, Tuple

import torch
from timm.layers.mixed_conv2d import MixedConv2d
from torch import nn

from ..util import ShrinkError
from .constructors import divide

__all__ = ['rewrite_narrow']


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


def rewrite_narrow(model: nn.Module, divisor: int, in_chans: int, model_name: str) -> nn.Module:
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
        div = lambda c, n=name: divide(c, divisor, n)  # noqa: E731
        if name in mixed:
            continue
        layer = True
        if isinstance(m, MixedConv2d):
            _shrink_mixed(m, in_chans if name in first else div(m.in_channels), div(m.out_channels))
            mixed.update(f'{name}.{k}' for k in m.keys())
        elif isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            _shrink_conv(m, in_chans if name in first else div(m.in_channels), div(m.out_channels))
            # weight-standardised (ScaledStdConv2d): gamma/sqrt(fan_in)
            if isinstance(getattr(m, 'scale', None), float):
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
            new = new.narrow(d, 0, divide(tensor.shape[d], divisor, f'{name}.{attr}'))
        new = new.clone()
        if len(tensor.shape) > 1 and tensor.numel() > max(tensor.shape):  # a table, not a per-channel vector
            kept.append(f'layer {name or "<root>"!r} ({type(m).__name__}) holds {attr} of shape '
                        f'{tuple(tensor.shape)}, resized to {tuple(new.shape)} as widths')
        if isinstance(tensor, nn.Parameter):
            setattr(m, attr, nn.Parameter(new, requires_grad=tensor.requires_grad))
        else:
            setattr(m, attr, new)
    return kept
