"""`wae`: a WAE classifier around any timm backbone given by name.

This is the architecture that ``WAEWrapper(backbone)`` models save as, so that
``create_model('hf-hub:owner/name')`` can rebuild them from ``config.json``'s model args.
"""
from typing import Any

from timm.models import generate_default_cfgs, register_model

from ..wrapper import WAEWrapper
from ._factory import create_wae, wae_cfg

default_cfgs = generate_default_cfgs({'wae': wae_cfg()})


@register_model
def wae(pretrained: bool = False, backbone: str = 'resnet50', **kwargs: Any) -> WAEWrapper:
    """WAE + any timm backbone: ``timm.create_model('wae', backbone='convnext_nano')``."""
    model = create_wae('wae', pretrained, backbone=backbone, **kwargs)
    model._model_args = model.model_args  # the generic name implies nothing: record every arg
    model.pretrained_cfg.update(
        {k: model.derived_cfg[k] for k in ('first_conv', 'classifier')})
    return model
