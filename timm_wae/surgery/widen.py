"""IH into the stem: the layers that read the backbone's input get more input channels, with zero weights."""
from typing import Sequence, Tuple

import torch
from torch import nn

from ..util import ShrinkError

__all__ = ['widen_input']


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
