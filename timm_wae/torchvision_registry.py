"""torchvision's door: ``torchvision.models.get_model('wae_resnet50', weights='IMAGENETTE')``.

Each model of the tag table (``timm_wae.pretrained``) gets a builder and a ``WeightsEnum`` made from its timm
pretrained cfgs (one member per tag), so that the weights, their transforms and their metadata
are described as data, as torchvision does it. The weights themselves come through timm's Hub
download, into the Hugging Face cache.
"""
import sys
from functools import partial
from typing import Any, Callable, Dict, Optional

import timm
import torch
import torchvision.models
from timm.models import get_pretrained_cfg
from torchvision.models._api import BUILTIN_MODELS, Weights, WeightsEnum, register_model
from torchvision.models._meta import _IMAGENET_CATEGORIES
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from .pretrained import IMAGENETTE_CATEGORIES, MODELS, TAGS
from .weights import WEIGHTS_NAME

__all__ = ['WEIGHTS', 'IMAGENETTE_CATEGORIES', 'register_torchvision_models']

_HUB = 'https://huggingface.co/{}/resolve/main/' + WEIGHTS_NAME

# Weights enums by model name, e.g. WEIGHTS['wae_resnet50'].IMAGENETTE
WEIGHTS: Dict[str, type] = {}


def _enum_name(model_name: str) -> str:
    """torchvision's spelling: wae_resnet50 -> WAE_ResNet50_Weights, wae_vgg16_bn -> WAE_VGG16_BN_Weights."""
    parts = [p.replace('resnet', 'ResNet') if p.startswith('resnet') else p.upper() for p in model_name.split('_')]
    return '_'.join(parts) + '_Weights'


def _num_params(model_name: str, num_classes: int) -> int:
    """Counted on the meta device: no memory, no initialisation, a few ms per model."""
    with torch.device('meta'):
        model = timm.create_model(model_name, num_classes=num_classes)
    return sum(p.numel() for p in model.parameters())


class _Meta(dict):
    """Weights metadata whose ``num_params`` is counted on first access: ``import timm_wae`` builds no
    model (building every registered model per tag took most of the import's own time)."""

    def __init__(self, model_name: str, num_classes: int, **items: Any):
        super().__init__(**items)
        self._count = (model_name, num_classes)

    def __missing__(self, key: str) -> Any:
        if key != 'num_params':
            raise KeyError(key)
        self[key] = _num_params(*self._count)
        return self[key]


def _weights(model_name: str, tag: str) -> Weights:
    cfg = get_pretrained_cfg(f'{model_name}.{tag}').to_dict()
    size = cfg['input_size'][-1]
    return Weights(
        url=_HUB.format(cfg['hf_hub_id']),
        transforms=partial(
            ImageClassification, crop_size=size, resize_size=int(round(size / cfg['crop_pct'])),
            mean=cfg['mean'], std=cfg['std'], interpolation=InterpolationMode(cfg['interpolation'])),
        meta=_Meta(
            model_name, cfg['num_classes'],
            categories=list(TAGS[tag].categories or _IMAGENET_CATEGORIES),
            tag=tag,
            hf_hub_id=cfg['hf_hub_id'],
            min_size=(size // 2, size // 2),
            recipe='recipes/README.md in the timm_wae repository',
            _metrics={},  # filled in when measured weights are published (MODEL_CARD.md)
            _docs=f'{model_name} ({tag}) published by timm_wae; loaded through timm from the Hugging Face Hub.',
        ),
    )


def _make_builder(model_name: str, weights_enum: type) -> Callable[..., Any]:
    def builder(*, weights: Optional[weights_enum] = None, progress: bool = True, **kwargs: Any):
        weights = weights_enum.verify(weights)
        if weights is None:
            return timm.create_model(model_name, **kwargs)
        kwargs.setdefault('num_classes', len(weights.meta['categories']))
        return timm.create_model(f"{model_name}.{weights.meta['tag']}", pretrained=True, **kwargs)

    builder.__name__ = builder.__qualname__ = model_name
    builder.__doc__ = f'{model_name} through torchvision; ``weights``: {weights_enum.__name__} or its member name.'
    return builder


def register_torchvision_models() -> None:
    """Register every model of the tag table with torchvision (idempotent)."""
    for name in MODELS:
        if name in BUILTIN_MODELS:
            continue
        members = {tag.upper(): _weights(name, tag) for tag in sorted(TAGS)}
        members['DEFAULT'] = members[get_pretrained_cfg(name).tag.upper()]
        weights_enum = WeightsEnum(_enum_name(name), members, module=__name__)
        WEIGHTS[name] = weights_enum
        setattr(sys.modules[__name__], weights_enum.__name__, weights_enum)
        setattr(torchvision.models, weights_enum.__name__, weights_enum)  # for get_weight('X_Weights.TAG')
        register_model(name)(_make_builder(name, weights_enum))
