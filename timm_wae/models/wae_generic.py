"""`wae`: a WAE classifier around any timm backbone given by name.

This is the architecture that ``WAEWrapper(backbone)`` models save as, so that
``create_model('hf-hub:owner/name')`` can rebuild them from ``config.json``'s model args.
"""
from typing import Any

from timm.models import generate_default_cfgs, get_pretrained_cfg, register_model

from ..wrapper import WAEWrapper, wae_layer_names, wae_pool_size
from ._factory import create_wae, wae_cfg

default_cfgs = generate_default_cfgs({'wae': wae_cfg('resnet50')})  # the default backbone


@register_model
def wae(pretrained: bool = False, backbone: str = 'resnet50', **kwargs: Any) -> WAEWrapper:
    """WAE + any timm backbone: ``timm.create_model('wae', backbone='convnext_nano')``."""
    # timm's loader reads the layer names before the model exists: make them from the backbone's cfg
    inner = get_pretrained_cfg(backbone)
    fusion_head = kwargs.get('use_ih', True) and kwargs.get('ih_fusion', 'branch') == 'branch' and \
        kwargs.get('front_end', 'wae') != 'resize'
    inner = inner.to_dict() if inner else {}
    names = dict(wae_layer_names(inner, kwargs.get('front_end', 'wae'), fusion_head),
                 pool_size=wae_pool_size(inner, (3, 224, 224), kwargs.get('front_end', 'wae')))
    kwargs['pretrained_cfg_overlay'] = dict(names, **(kwargs.get('pretrained_cfg_overlay') or {}))
    model = create_wae('wae', pretrained, backbone=backbone, **kwargs)
    image = getattr(model, 'pretrained_cfg', {}).get('input_size', (3, 224, 224))
    if [-(-s // 2) for s in image[1:]] in getattr(model, 'failed_il_sizes', ()):  # HRNet, DLA at 224 px: a size it runs at
        model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(image[0], *[2 * s for s in model.branch_size]))
    return model
