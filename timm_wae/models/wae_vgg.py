"""WAE VGGs in the layout of the authors' released Caffe model (its deploy prototxt; MODEL_CARD.md).

The released IL branch is VGG's conv stack with ceil-mode pooling (pool5 is 4x4 at 112 input)
and a small head, fc 1024-1024-C; the fusion head is fc 2048-2048-C on concat(pool5 maps).
timm's own VGG head (a 7x7 conv to 4096 channels) reads 411 MB of weights per image and would
cost most of the batch-1 speed-up, so the registered models use the released head.
"""
from typing import Any, Optional

import timm
from timm.layers import ClassifierHead
from timm.models import generate_default_cfgs, register_model
from timm.models.vgg import VGG
from torch import nn

from ..wrapper import FlatMlp, WAEWrapper
from ._factory import create_wae, hub_cfgs

__all__ = ['released_vgg']

default_cfgs = generate_default_cfgs({  # the released head keeps timm's classifier name, head.fc
    **hub_cfgs('wae_vgg11', 'vgg11'),
    **hub_cfgs('wae_vgg16', 'vgg16'),
    **hub_cfgs('wae_vgg16_bn', 'vgg16_bn'),
})


def released_vgg(
        arch: str,
        num_classes: int = 1000,
        head_hidden: int = 1024,
        head_kernel: int = 4,
        drop_rate: float = 0.5,
        in_chans: int = 3,
) -> VGG:
    """A timm VGG with ceil-mode pooling and the released head: fc on the flattened 4x4 pool5 map."""
    model = timm.create_model(arch, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    for m in model.features:
        if isinstance(m, nn.MaxPool2d):
            m.ceil_mode = True
    model.pre_logits = FlatMlp(model.num_features, head_hidden, head_kernel, drop_rate)
    model.head = ClassifierHead(head_hidden, num_classes, drop_rate=drop_rate)
    model.head_hidden_size = head_hidden
    return model


def _wae_vgg(
        backbone: str,
        num_classes: int = 1000,
        head_hidden: int = 1024,
        fusion_hidden: Optional[int] = 2048,
        drop_rate: float = 0.5,
        in_chans: int = 3,
        **kwargs: Any,
) -> WAEWrapper:
    vgg = released_vgg(backbone, num_classes, head_hidden, drop_rate=drop_rate)
    model = WAEWrapper(vgg, num_classes, in_chans=in_chans, fusion_hidden=fusion_hidden,
                       drop_rate=drop_rate, **kwargs)
    for m in model.ih_branch.modules() if model.ih_branch is not None else ():
        if isinstance(m, nn.MaxPool2d):
            m.ceil_mode = True  # the IH pool5 map must match IL's 4x4
    return model


def _create(variant: str, backbone: str, pretrained: bool, **kwargs: Any) -> WAEWrapper:
    return create_wae(variant, pretrained, model_fn=_wae_vgg, **dict(dict(backbone=backbone), **kwargs))


@register_model
def wae_vgg11(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE + VGG-11, released head layout."""
    return _create('wae_vgg11', 'vgg11', pretrained, **kwargs)


@register_model
def wae_vgg16(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE + VGG-16 as released by the authors: 4.38 GMAC vs 15.47, 3.13x on CPU in the paper."""
    return _create('wae_vgg16', 'vgg16', pretrained, **kwargs)


@register_model
def wae_vgg16_bn(pretrained: bool = False, **kwargs: Any) -> WAEWrapper:
    """WAE + VGG-16 with BatchNorm, released head layout."""
    return _create('wae_vgg16_bn', 'vgg16_bn', pretrained, **kwargs)
