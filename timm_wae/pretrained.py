"""The pretrained tags as data: one table that timm's cfgs, torchvision's Weights enums and hubconf all read.

Each registered model has the same tags (``.in1k``, the default, and ``.imagenette``), each a dataset with its
class count, input size, label names and license; the Hub id is ``timm-wae/<model>.<tag>``. Nothing here imports
torch, so the table also serves code that must stay light.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ['HUB_ORG', 'Tag', 'TAGS', 'MODELS', 'FAMILIES', 'IMAGENETTE_CATEGORIES', 'hub_id', 'tag_of_data']

# The Hugging Face organisation that the project's weights are published under.
HUB_ORG = 'timm-wae'

IMAGENETTE_CATEGORIES = (
    'tench', 'English springer', 'cassette player', 'chain saw', 'church', 'French horn',
    'garbage truck', 'gas pump', 'golf ball', 'parachute',
)


@dataclass(frozen=True)
class Tag:
    """What the weights of one tag were trained on, and how to feed them."""
    dataset: str
    num_classes: int
    input_size: Tuple[int, int, int]
    license: str
    categories: Optional[Tuple[str, ...]] = None  # None: ImageNet-1k's (torchvision's list)
    backbone_transform: bool = False  # eval with the backbone's interpolation and crop (what the recipes train with)


TAGS: Dict[str, Tag] = {  # the first is the default
    'in1k': Tag('imagenet-1k', 1000, (3, 224, 224), 'apache-2.0'),
    # Imagenette's images come from ImageNet and are for non-commercial research use
    'imagenette': Tag('imagenette', 10, (3, 128, 128), 'other', IMAGENETTE_CATEGORIES, backbone_transform=True),
}

# every registered model with pretrained tags: name -> its backbone; the name's prefix is the front end
MODELS: Dict[str, str] = {
    **{f'wae_{b}': b for b in ('vgg11', 'vgg16', 'vgg16_bn', 'resnet18', 'resnet34', 'resnet50')},
    **{f'{f}_{b}': b for f in ('wae2', 'wae4')
       for b in ('resnet18', 'resnet50', 'efficientnet_b0', 'mobilenetv3_large_100')},
}

# the registered families, as timm.list_models patterns (the generic `wae` takes any backbone by name)
FAMILIES = ('wae_*', 'wae2_*', 'wae4_*')


def hub_id(model: str, tag: str) -> str:
    """Where the weights of ``model.tag`` are published: ``timm-wae/wae_resnet18.imagenette``."""
    return f'{HUB_ORG}/{model}.{tag}'


def tag_of_data(root: Optional[str]) -> Optional[str]:
    """The tag whose dataset a training data folder holds (its name in the path), None for another dataset."""
    return next((t for t, d in TAGS.items() if root and d.dataset in str(root)), None)
