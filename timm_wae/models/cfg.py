"""What a WAE model's pretrained cfg says: its layer names and pool size (asked of its front end), and the cfg
of each pretrained tag (``timm_wae.pretrained``); the one reader of ``ih_fusion``."""
import math
from typing import Any, Dict, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import get_pretrained_cfg

from ..front_ends import front_end_class
from ..pretrained import TAGS, hub_id

__all__ = ['IH_FUSIONS', 'ih_into_stem', 'has_fusion_head', 'pool_size', 'layer_names', 'wae_cfg', 'tag_cfgs']

IH_FUSIONS = ('branch', 'stem')  # where IH joins: a quarter-width copy and a fusion head, or the first conv


def ih_into_stem(ih_fusion: str) -> bool:
    """Whether IH joins as extra channels of the backbone's first conv; the one reader of ``ih_fusion``."""
    if ih_fusion not in IH_FUSIONS:
        raise ValueError(f"unknown ih_fusion {ih_fusion!r}; expected 'branch' or 'stem'")
    return ih_fusion == 'stem'


def has_fusion_head(front_end: str, use_ih: bool = True, ih_fusion: str = 'branch') -> bool:
    """Whether a model has an IH branch and a fusion head: IH used, made by the front end, not into the stem."""
    return use_ih and front_end_class(front_end).makes_ih and not ih_into_stem(ih_fusion)


def pool_size(backbone_cfg: Dict[str, Any], input_size: Tuple[int, ...], front_end: str) -> Tuple[int, int]:
    """The unpooled feature map's size (timm's ``pool_size``) at ``input_size``: the front end divides the
    side by its reduction, the backbone by its own (its cfg's input over pool size; 32 when unknown)."""
    inner_in, inner_pool = backbone_cfg.get('input_size') or (3, 224, 224), backbone_cfg.get('pool_size') or (7, 7)
    reduction = front_end_class(front_end).reduction
    return tuple(math.ceil(math.ceil(s / reduction) / (i // p))
                 for s, i, p in zip(input_size[-2:], inner_in[-2:], inner_pool))


def layer_names(backbone_cfg: Dict[str, Any], front_end: str = 'wae', fusion_head: bool = True) -> Dict[str, Any]:
    """The pretrained-cfg ``first_conv`` and ``classifier`` of a WAE model, from its backbone's cfg and its
    front end (whose first layer, where it has one, reads the image). The one place these names are made."""
    inner = backbone_cfg.get('classifier') or 'head.fc'
    classifier = f'backbone.{inner if isinstance(inner, str) else inner[0]}'
    layer = front_end_class(front_end).first_layer
    first_conv = f'front_end.{layer}' if layer else f'backbone.{backbone_cfg.get("first_conv", "")}'
    return dict(first_conv=first_conv, classifier=(classifier, 'fusion_head.head.fc') if fusion_head else classifier)


def wae_cfg(backbone: str, front_end: str = 'wae', fusion_head: bool = True,
            input_size: Tuple[int, int, int] = (3, 224, 224), **kwargs: Any) -> Dict[str, Any]:
    """A pretrained cfg entry for a WAE model around ``backbone`` (ImageNet's data config unless ``kwargs``
    say otherwise)."""
    inner = get_pretrained_cfg(backbone).to_dict()
    return {
        'url': '',
        'num_classes': 1000, 'input_size': input_size, 'pool_size': pool_size(inner, input_size, front_end),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        **layer_names(inner, front_end, fusion_head),
        'license': 'apache-2.0',
        **kwargs,
    }


def tag_cfgs(name: str, backbone: str, front_end: str, fusion_head: bool) -> Dict[str, Dict[str, Any]]:
    """``name.tag`` -> its cfg, for every tag of ``timm_wae.pretrained.TAGS`` (the first is the default)."""
    inner = get_pretrained_cfg(backbone).to_dict()
    cfgs = {}
    for tag, data in TAGS.items():
        transform = {k: inner[k] for k in ('interpolation', 'crop_pct')} if data.backbone_transform else {}
        cfgs[f'{name}.{tag}'] = wae_cfg(
            backbone, front_end, fusion_head, input_size=data.input_size, hf_hub_id=hub_id(name, tag),
            num_classes=data.num_classes, license=data.license, **transform)
    return cfgs
