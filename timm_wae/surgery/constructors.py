"""The quarter-width copy through a family's own constructor, for families whose timm constructor takes widths."""
import math
from dataclasses import replace
from typing import Callable, Dict, Optional, Type

import timm
from timm.models.convnext import ConvNeXt
from timm.models.cspnet import CspNet
from timm.models.cspnet import model_cfgs as cspnet_cfgs
from timm.models.densenet import DenseNet
from timm.models.edgenext import EdgeNeXt
from timm.models.resnet import ResNet
from timm.models.vgg import VGG
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..util import ShrinkError

__all__ = ['WIDTH_ARGS', 'FALLBACK_WIDTH_ARGS', 'rebuild_narrow', 'divide', 'check_divisor']


def check_divisor(divisor: int) -> None:
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1:
        raise ValueError(f'width_divisor must be a positive integer (the paper uses 4), got {divisor!r}')


def divide(channels: int, divisor: int, layer: str) -> int:
    if channels < divisor:
        raise ShrinkError(
            f'layer {layer!r} has {channels} channels, which cannot be divided by width_divisor={divisor}')
    return math.ceil(channels / divisor)


def _vgg_args(model: VGG, d: int) -> dict:
    cfg = ['M' if isinstance(m, nn.MaxPool2d) else divide(m.out_channels, d, f'features.{i}')
           for i, m in enumerate(model.features) if isinstance(m, (nn.MaxPool2d, nn.Conv2d))]
    norm = next((type(m) for m in model.features if isinstance(m, nn.BatchNorm2d)), None)
    return dict(cfg=cfg, norm_layer=norm)


def _convnext_args(model: ConvNeXt, d: int) -> dict:
    return dict(dims=tuple(divide(f['num_chs'], d, f['module']) for f in model.feature_info))


def _densenet_args(model: DenseNet, d: int) -> dict:
    growth = model.features.denseblock1.denselayer1.conv2.out_channels
    return dict(growth_rate=divide(growth, d, 'features.denseblock1.denselayer1.conv2'))


def _resnet_args(model: ResNet, d: int) -> dict:
    """Planes per stage and stem width: what Res2Net's per-scale splits are derived from."""
    planes = []
    for i in range(1, 5):
        block = getattr(model, f'layer{i}')[0]
        last = block.conv3 if hasattr(block, 'conv3') else block.conv2
        planes.append(divide(last.out_channels // getattr(block, 'expansion', 1), d, f'layer{i}.0'))
    stem = model.conv1 if isinstance(model.conv1, nn.Conv2d) else model.conv1[0]
    return dict(channels=tuple(planes), stem_width=divide(stem.out_channels, d, 'conv1'))


def _edgenext_args(model: EdgeNeXt, d: int) -> dict:
    """dims divided, rounded up to a multiple of the attention heads (4 in every EdgeNeXt)."""
    return dict(dims=tuple(4 * math.ceil(divide(f['num_chs'], d, f['module']) / 4) for f in model.feature_info))


def _cspnet(model: CspNet, arch: str, d: int, in_chans: int) -> nn.Module:
    """CspNet takes its widths as a config dataclass: the stem's and the stages' out_chs divided."""
    cfg = cspnet_cfgs[arch]
    stem_out = cfg.stem.out_chs
    stem_out = (tuple(divide(c, d, 'stem') for c in stem_out) if isinstance(stem_out, tuple)
                else divide(stem_out, d, 'stem'))
    cfg = replace(cfg, stem=replace(cfg.stem, out_chs=stem_out),
                  stages=replace(cfg.stages, out_chs=tuple(divide(c, d, 'stages') for c in cfg.stages.out_chs)))
    return CspNet(cfg=cfg, in_chans=in_chans, num_classes=0)


def _vit_args(model: VisionTransformer, d: int) -> dict:
    """embed_dim divided, rounded up to a multiple of the heads (kept, so each head narrows too); the
    token grid of the backbone (built for the half-size input), so IL's and IH's tokens line up."""
    heads = model.blocks[0].attn.num_heads if len(model.blocks) else 1
    return dict(embed_dim=heads * math.ceil(divide(model.embed_dim, d, 'patch_embed.proj') / heads),
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


def rebuild_narrow(model: nn.Module, divisor: int, in_chans: int,
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
