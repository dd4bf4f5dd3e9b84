"""What every wae_* entry function shares: default cfgs and the call to timm's builder."""
from typing import Any, Callable, Dict, Optional

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, get_pretrained_cfg
from timm.models._builder import resolve_pretrained_cfg  # the builder's own cfg resolution
from torch import nn

from ..hub import before_download, check_weights_file, timm_filter, translate_hub_errors
from ..wrapper import WAEWrapper, wae_layer_names, wae_pool_size

# The Hugging Face organisation that the project's weights are published under.
HUB_ORG = 'timm-wae'


def wae_cfg(backbone: str, front_end: str = 'wae', fusion_head: bool = True, url: str = '',
            **kwargs: Any) -> Dict[str, Any]:
    """A pretrained cfg entry for a WAE model around ``backbone``; its first conv and classifiers are
    named by ``wae_layer_names``, the one place those names are made."""
    inner = get_pretrained_cfg(backbone).to_dict()
    input_size = kwargs.pop('input_size', (3, 224, 224))
    return {
        'url': url,
        'num_classes': 1000, 'input_size': input_size, 'pool_size': wae_pool_size(inner, input_size, front_end),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        **wae_layer_names(inner, front_end, fusion_head),
        'license': 'apache-2.0',
        **kwargs,
    }


def hub_cfgs(name: str, backbone: str, front_end: str = 'wae', fusion_head: bool = True,
             imagenette: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Dict[str, Dict[str, Any]]:
    """The two tags every registered model has: ImageNet-1k (default) and Imagenette (10 classes).

    ``imagenette`` overrides the Imagenette tag's eval transform: it must be what the recipe
    trained and evaluated with (the backbone's timm data config at 128 px).
    """
    layers = dict(backbone=backbone, front_end=front_end, fusion_head=fusion_head)
    return {
        f'{name}.in1k': wae_cfg(**layers, hf_hub_id=f'{HUB_ORG}/{name}.in1k', **kwargs),
        f'{name}.imagenette': wae_cfg(
            **layers, hf_hub_id=f'{HUB_ORG}/{name}.imagenette', num_classes=10, input_size=(3, 128, 128),
            license='other', **dict(kwargs, **(imagenette or {}))),
    }


def _offline_overlay(variant: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Weights that come from the Hub: fail at once when it does not answer and nothing is cached,
    or load the cached file without the Hub client's retries."""
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                 pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay')).to_dict()
    if cfg.get('file'):  # the local-file route: a file timm's loader would misread is named here
        check_weights_file(cfg['file'])
        return kwargs
    if not cfg.get('hf_hub_id'):
        return kwargs
    what = _tagged(variant, kwargs)
    cached = before_download(cfg['hf_hub_id'], what)
    if cached is None:
        return kwargs
    return dict(kwargs, pretrained_cfg_overlay=dict(kwargs.get('pretrained_cfg_overlay') or {}, file=cached))


def _tagged(variant: str, kwargs: Dict[str, Any]) -> str:
    """The name with its pretrained tag (``wae_resnet18.imagenette``), as the user asked for it."""
    if '.' in variant:
        return variant
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'))
    return f'{variant}.{cfg.tag}' if getattr(cfg, 'tag', None) else variant


def create_wae(
        variant: str,
        pretrained: bool = False,
        model_fn: Callable[..., nn.Module] = WAEWrapper,
        **kwargs: Any,
) -> WAEWrapper:
    """Build a registered variant (timm.create_model records the explicit kwargs; the name implies
    the rest).

    Pretrained weights are checked key by key and shape by shape before loading, and download
    failures say how to load a local file instead.
    """
    kwargs.pop('energy_weight', None)  # λ, a loss weight, was saved as a model arg before timm_wae 0.2
    if pretrained:
        kwargs = _offline_overlay(variant, kwargs)
    if kwargs.get('features_only'):  # the pyramid comes from forward_intermediates, both networks joined
        kwargs.setdefault('feature_cls', 'getter')
        if 'out_indices' not in kwargs and isinstance(kwargs.get('backbone'), str):  # every level of the backbone's
            with torch.device('meta'):
                kwargs['out_indices'] = tuple(range(len(timm.create_model(kwargs['backbone']).feature_info)))
    with translate_hub_errors(_tagged(variant, kwargs) if pretrained else variant):
        return build_model_with_cfg(
            model_fn, variant, pretrained, pretrained_strict=True, pretrained_filter_fn=timm_filter, **kwargs)
