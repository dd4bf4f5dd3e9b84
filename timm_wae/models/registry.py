"""The registered WAE models in timm's layout: default cfgs from the tag table, one ``_create``, every entry.

``wae_*`` are the paper's models (the learned WAE, IH into a quarter-width branch); ``wae_vgg*`` follow the
authors' released layout (ceil-mode pooling, fc 1024-1024 head, fc 2048-2048 fusion head). ``wae2_*`` and
``wae4_*`` are the project's speed-accuracy choice (MODEL_CARD.md): the learned front end that starts as the
exact Haar DWT, at one level (the image to half its side) or two (a quarter), IH into the first conv
(``ih_fusion='stem'``: no quarter-width network). ``wae`` takes any timm backbone by name; it is what a
``WAEWrapper`` saves as, so that ``create_model('hf-hub:owner/name')`` rebuilds it from config.json.
"""
from typing import Any, Dict, Optional

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg, register_model

from .._compat import drop_legacy_args
from ..config_json import check_model_args, source_config_name
from ..download import offline_overlay, tagged_name, translate_hub_errors
from ..pretrained import FAMILIES
from ..surgery import ceil_mode_pooling, released_vgg
from ..surgery.adapter import TORCHVISION_PREFIX
from ..weights import check_pretrained
from .cfg import has_fusion_head, layer_names, pool_size, tag_cfgs, wae_cfg
from .wae import WAEWrapper

__all__ = ['FAMILIES']


def _cfgs(name: str, backbone: str, front_end: str, ih_fusion: str) -> Dict[str, Dict[str, Any]]:
    """The tagged cfgs of one registered model: its layer names depend on the front end and where IH joins, so
    each row states the model args that its entry below passes (a test checks they agree)."""
    return tag_cfgs(name, backbone, front_end, has_fusion_head(front_end, ih_fusion=ih_fusion))


default_cfgs = generate_default_cfgs({
    'wae': wae_cfg('resnet50'),  # the default backbone; no weights
    **_cfgs('wae_vgg11', 'vgg11', 'wae', 'branch'),
    **_cfgs('wae_vgg16', 'vgg16', 'wae', 'branch'),
    **_cfgs('wae_vgg16_bn', 'vgg16_bn', 'wae', 'branch'),
    **_cfgs('wae_resnet18', 'resnet18', 'wae', 'branch'),
    **_cfgs('wae_resnet34', 'resnet34', 'wae', 'branch'),
    **_cfgs('wae_resnet50', 'resnet50', 'wae', 'branch'),
    **_cfgs('wae2_resnet18', 'resnet18', 'wae2', 'stem'),
    **_cfgs('wae2_resnet50', 'resnet50', 'wae2', 'stem'),
    **_cfgs('wae2_efficientnet_b0', 'efficientnet_b0', 'wae2', 'stem'),
    **_cfgs('wae2_mobilenetv3_large_100', 'mobilenetv3_large_100', 'wae2', 'stem'),
    **_cfgs('wae4_resnet18', 'resnet18', 'wae4', 'stem'),
    **_cfgs('wae4_resnet50', 'resnet50', 'wae4', 'stem'),
    **_cfgs('wae4_efficientnet_b0', 'efficientnet_b0', 'wae4', 'stem'),
    **_cfgs('wae4_mobilenetv3_large_100', 'mobilenetv3_large_100', 'wae4', 'stem'),
})


def _wae_vgg(backbone: str, num_classes: int = 1000, head_hidden: int = 1024, fusion_hidden: Optional[int] = 2048,
             drop_rate: float = 0.5, in_chans: int = 3, **kwargs: Any) -> WAEWrapper:
    """A WAE VGG in the released layout: 4.38 GMAC for VGG-16 (15.47 plain), 3.13x on CPU in the paper."""
    vgg = released_vgg(backbone, num_classes, head_hidden, drop_rate=drop_rate)
    model = WAEWrapper(vgg, num_classes, in_chans=in_chans, fusion_hidden=fusion_hidden, drop_rate=drop_rate, **kwargs)
    if model.ih_branch is not None:
        ceil_mode_pooling(model.ih_branch)  # the IH pool5 map must match IL's 4x4
    return model


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """Build a registered variant from its entry's model args and the caller's kwargs (which override them).

    The one place a WAE model's ``pretrained_cfg`` is set: timm's builder with the registered cfg (for the
    generic ``wae``, the layer names of the backbone given, which timm's loader reads before the model exists,
    and an image size it runs at). Pretrained weights are checked key by key and shape by shape before loading
    (``weights.check_pretrained``), and download failures say how to load a local file instead.
    """
    if 'pretrained_model_args' in kwargs:  # timm's local-dir: and hf-hub: doors: a config.json's model_args
        check_model_args(kwargs['pretrained_model_args'], variant, source_config_name(kwargs.get('pretrained_cfg')))
    drop_legacy_args(kwargs)
    if variant == 'wae':
        backbone = kwargs.setdefault('backbone', 'resnet50')
        inner = get_pretrained_cfg(backbone)
        inner = inner.to_dict() if inner else {}
        front_end = kwargs.get('front_end', 'wae')
        fusion_head = has_fusion_head(front_end, kwargs.get('use_ih', True), kwargs.get('ih_fusion', 'branch'))
        names = dict(layer_names(inner, front_end, fusion_head), pool_size=pool_size(inner, (3, 224, 224), front_end))
        kwargs['pretrained_cfg_overlay'] = dict(names, **(kwargs.get('pretrained_cfg_overlay') or {}))
    if pretrained:
        kwargs = offline_overlay(variant, kwargs)
    if kwargs.get('features_only'):  # the pyramid comes from forward_intermediates, both networks joined
        kwargs.setdefault('feature_cls', 'getter')
        if 'out_indices' not in kwargs and isinstance(kwargs.get('backbone'), str):  # every level of the backbone's
            with torch.device('meta'):
                kwargs['out_indices'] = tuple(range(len(timm.create_model(kwargs['backbone']).feature_info)))
    model_fn = _wae_vgg if variant.startswith('wae_vgg') else WAEWrapper
    with translate_hub_errors(tagged_name(variant, kwargs) if pretrained else variant):
        model = build_model_with_cfg(model_fn, variant, pretrained, pretrained_strict=True,
                                     pretrained_filter_fn=check_pretrained, **kwargs)
    # a torchvision backbone is not in timm's cfgs: the adapter's names
    if variant == 'wae' and str(kwargs['backbone']).startswith(TORCHVISION_PREFIX):
        model.pretrained_cfg = dict(model.pretrained_cfg, **layer_names(model.backbone.pretrained_cfg, front_end,
                                                                        fusion_head))
    image = getattr(model, 'pretrained_cfg', {}).get('input_size', (3, 224, 224))
    if variant == 'wae' and [-(-s // 2) for s in image[1:]] in getattr(model, 'failed_il_sizes', ()):
        # HRNet, DLA at 224 px: a size it runs at
        model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(image[0], *[2 * s for s in model.branch_size]))
    return model


@register_model
def wae(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE + any timm backbone: ``timm.create_model('wae', backbone='convnext_nano')``."""
    return _create('wae', pretrained, **kwargs)


@register_model
def wae_vgg11(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE + VGG-11, released head layout."""
    model_args = dict(backbone='vgg11', front_end='wae', ih_fusion='branch')
    return _create('wae_vgg11', pretrained, **dict(model_args, **kwargs))


@register_model
def wae_vgg16(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE + VGG-16 as released by the authors: 4.38 GMAC vs 15.47, 3.13x on CPU in the paper."""
    model_args = dict(backbone='vgg16', front_end='wae', ih_fusion='branch')
    return _create('wae_vgg16', pretrained, **dict(model_args, **kwargs))


@register_model
def wae_vgg16_bn(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE + VGG-16 with BatchNorm, released head layout."""
    model_args = dict(backbone='vgg16_bn', front_end='wae', ih_fusion='branch')
    return _create('wae_vgg16_bn', pretrained, **dict(model_args, **kwargs))


@register_model
def wae_resnet18(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE + ResNet-18: IL into resnet18, IH into a quarter-width resnet18."""
    model_args = dict(backbone='resnet18', front_end='wae', ih_fusion='branch')
    return _create('wae_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def wae_resnet34(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE + ResNet-34."""
    model_args = dict(backbone='resnet34', front_end='wae', ih_fusion='branch')
    return _create('wae_resnet34', pretrained, **dict(model_args, **kwargs))


@register_model
def wae_resnet50(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE + ResNet-50, the paper's second network (1.88x on CPU, top-5 error 8.86 -> 9.66)."""
    model_args = dict(backbone='resnet50', front_end='wae', ih_fusion='branch')
    return _create('wae_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def wae2_resnet18(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE2 + ResNet-18: Haar-started half-resolution encoder, IH into the first conv."""
    model_args = dict(backbone='resnet18', front_end='wae2', ih_fusion='stem')
    return _create('wae2_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def wae2_resnet50(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE2 + ResNet-50."""
    model_args = dict(backbone='resnet50', front_end='wae2', ih_fusion='stem')
    return _create('wae2_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def wae2_efficientnet_b0(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE2 + EfficientNet-B0: the cheap encoder keeps a mobile backbone faster than at full resolution."""
    model_args = dict(backbone='efficientnet_b0', front_end='wae2', ih_fusion='stem')
    return _create('wae2_efficientnet_b0', pretrained, **dict(model_args, **kwargs))


@register_model
def wae2_mobilenetv3_large_100(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE2 + MobileNetV3-Large 1.0."""
    model_args = dict(backbone='mobilenetv3_large_100', front_end='wae2', ih_fusion='stem')
    return _create('wae2_mobilenetv3_large_100', pretrained, **dict(model_args, **kwargs))


@register_model
def wae4_resnet18(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE4 + ResNet-18: two Haar levels (a quarter of the side), the 45 detail channels into the first conv."""
    model_args = dict(backbone='resnet18', front_end='wae4', ih_fusion='stem')
    return _create('wae4_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def wae4_resnet50(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE4 + ResNet-50."""
    model_args = dict(backbone='resnet50', front_end='wae4', ih_fusion='stem')
    return _create('wae4_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def wae4_efficientnet_b0(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE4 + EfficientNet-B0."""
    model_args = dict(backbone='efficientnet_b0', front_end='wae4', ih_fusion='stem')
    return _create('wae4_efficientnet_b0', pretrained, **dict(model_args, **kwargs))


@register_model
def wae4_mobilenetv3_large_100(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE4 + MobileNetV3-Large 1.0."""
    model_args = dict(backbone='mobilenetv3_large_100', front_end='wae4', ih_fusion='stem')
    return _create('wae4_mobilenetv3_large_100', pretrained, **dict(model_args, **kwargs))
