"""WAE2 and WAE4: the cheap learned WAE that starts as the exact Haar DWT, the project's speed-accuracy
choice (MODEL_CARD.md, "Speed-accuracy front"). The digit is how much the image's side shrinks:
``wae2_*`` halve it (one Haar level), ``wae4_*`` quarter it (two levels, 45 detail channels).

What changes against the paper's ``wae_*`` models (which stay as the reproduction):
- the encoder (``front_end='wae2'``) runs at half resolution after a space-to-depth and starts as
  the exact Haar DWT: 17 % of the paper encoder's MACs, and before any training it is the fixed
  wavelet, so learning can only move it where the loss improves;
- IH is the 9 detail channels and joins IL as extra input channels of the backbone's first conv
  (``ih_fusion='stem'``): no quarter-width second network, whose narrow layers run far below the
  backbone's efficiency on a CPU. ``ih_fusion='branch'`` keeps the paper's IH branch.
"""
from typing import Any, Dict

from timm.models import generate_default_cfgs, get_pretrained_cfg, register_model

from ..wrapper import WAEWrapper
from ._factory import create_wae, hub_cfgs

IH_FUSION = 'stem'  # the default of every wae2_* model

# model name -> backbone; the name's prefix is the front end. Each backbone's own eval transform is what
# the recipes train with.
_BACKBONES = {
    f'{front_end}_{backbone}': backbone
    for front_end in ('wae2', 'wae4')
    for backbone in ('resnet18', 'resnet50', 'efficientnet_b0', 'mobilenetv3_large_100')
}


def _cfgs(name: str, backbone: str) -> Dict[str, Dict[str, Any]]:
    inner = get_pretrained_cfg(backbone).to_dict()
    transform = {k: inner[k] for k in ('interpolation', 'crop_pct')}
    return hub_cfgs(name, backbone, name.split('_')[0], fusion_head=IH_FUSION == 'branch', imagenette=transform)


default_cfgs = generate_default_cfgs({
    tag: cfg for name, backbone in _BACKBONES.items() for tag, cfg in _cfgs(name, backbone).items()
})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> WAEWrapper:
    args = dict(backbone=_BACKBONES[variant], front_end=variant.split('_')[0], ih_fusion=IH_FUSION)
    return create_wae(variant, pretrained, **dict(args, **kwargs))


@register_model
def wae2_resnet18(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE2 + ResNet-18: Haar-started half-resolution encoder, IH into the first conv."""
    return _create('wae2_resnet18', pretrained, **kwargs)


@register_model
def wae2_resnet50(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE2 + ResNet-50."""
    return _create('wae2_resnet50', pretrained, **kwargs)


@register_model
def wae2_efficientnet_b0(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE2 + EfficientNet-B0: the cheap encoder keeps a mobile backbone faster than at full resolution."""
    return _create('wae2_efficientnet_b0', pretrained, **kwargs)


@register_model
def wae2_mobilenetv3_large_100(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE2 + MobileNetV3-Large 1.0."""
    return _create('wae2_mobilenetv3_large_100', pretrained, **kwargs)


@register_model
def wae4_resnet18(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE4 + ResNet-18: two Haar levels (a quarter of the side), the 45 detail channels into the first conv."""
    return _create('wae4_resnet18', pretrained, **kwargs)


@register_model
def wae4_resnet50(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE4 + ResNet-50."""
    return _create('wae4_resnet50', pretrained, **kwargs)


@register_model
def wae4_efficientnet_b0(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE4 + EfficientNet-B0."""
    return _create('wae4_efficientnet_b0', pretrained, **kwargs)


@register_model
def wae4_mobilenetv3_large_100(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE4 + MobileNetV3-Large 1.0."""
    return _create('wae4_mobilenetv3_large_100', pretrained, **kwargs)
