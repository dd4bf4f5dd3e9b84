"""WAE ResNets: the IL branch is timm's ResNet unchanged, the IH branch a quarter-width copy."""
from typing import Any

from timm.models import generate_default_cfgs, register_model

from ._factory import create_wae, hub_cfgs

default_cfgs = generate_default_cfgs({
    tag: cfg
    for name in ('wae_resnet18', 'wae_resnet34', 'wae_resnet50')
    for tag, cfg in hub_cfgs(name, name[len('wae_'):], imagenette=dict(interpolation='bicubic', crop_pct=0.95)).items()
})


def _create(variant: str, backbone: str, pretrained: bool, **kwargs: Any):
    return create_wae(variant, pretrained, **dict(dict(backbone=backbone), **kwargs))


@register_model
def wae_resnet18(pretrained: bool = False, **kwargs: Any):
    """WAE + ResNet-18: IL into resnet18, IH into a quarter-width resnet18."""
    return _create('wae_resnet18', 'resnet18', pretrained, **kwargs)


@register_model
def wae_resnet34(pretrained: bool = False, **kwargs: Any):
    """WAE + ResNet-34."""
    return _create('wae_resnet34', 'resnet34', pretrained, **kwargs)


@register_model
def wae_resnet50(pretrained: bool = False, **kwargs: Any):
    """WAE + ResNet-50, the paper's second network (1.88x on CPU, top-5 error 8.86 -> 9.66)."""
    return _create('wae_resnet50', 'resnet50', pretrained, **kwargs)
