"""Building the backbone a WAE model wraps: a timm name (its weights fetched as a WAE model's are), a
``torchvision:NAME``, or a copy of the user's module, fitted to an IL size it runs at (``probe.py``)."""
import copy
import math
from typing import Any, Dict, List, Optional, Tuple, Union

import timm
from torch import nn

from ..download import offline_overlay, translate_hub_errors
from ..util import BackboneError, model_name, share_in_words
from .adapter import TORCHVISION_PREFIX, adapt_classifier, create_torchvision
from .probe import il_sizes, probe_backbone

__all__ = ['create_backbone', 'fit_backbone']


def create_backbone(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` for a backbone, whose weights (when asked for) come as a WAE model's do: at once
    offline with a HubUnavailableError that names HF_HUB_OFFLINE and the local-file route, a local file
    checked first."""
    if not pretrained:
        return timm.create_model(name, **kwargs)
    with translate_hub_errors(name):
        return timm.create_model(name, pretrained=True, **offline_overlay(name, kwargs))


def fit_backbone(backbone: Union[str, nn.Module], backbone_kwargs: Dict[str, Any], num_classes: Optional[int],
                 in_chans: int, reduction: int, pretrained: bool = False
                 ) -> Tuple[nn.Module, Tuple[int, int], str, List[str], List[List[int]]]:
    """The backbone (a timm name or ``torchvision:NAME``, built with ``backbone_kwargs`` and ``num_classes``, or a
    copy of a module, adapted when it has no timm contract: ``adapter.py``) built
    for an IL size it runs at: (backbone, IL size, feature layout, the convs that read its input, the IL sizes it
    did not run at). A fixed token grid (ViT, Swin) is rebuilt for each size tried; BackboneError when none runs."""
    if isinstance(backbone, str) and backbone.startswith(TORCHVISION_PREFIX):
        if num_classes is not None:
            backbone_kwargs['num_classes'] = num_classes
        given = backbone = create_torchvision(backbone, pretrained, **backbone_kwargs)
        make = lambda il_size: given  # noqa: E731
    elif isinstance(backbone, str):
        if num_classes is not None:
            backbone_kwargs['num_classes'] = num_classes
        name, inner = backbone, timm.models.get_pretrained_cfg(backbone)
        # a fixed token grid (ViT, Swin): the backbone is built for IL, 1/reduction of the image's size
        fixed = inner is not None and inner.fixed_input_size and 'img_size' not in backbone_kwargs
        made: Dict[Any, nn.Module] = {}

        def make(il_size: Optional[Tuple[int, int]]) -> nn.Module:
            key = il_size if fixed else None
            if key not in made:
                made[key] = create_backbone(name, pretrained, in_chans=in_chans,
                                            **backbone_kwargs, **({'img_size': list(key)} if fixed else {}))
            return made[key]
        try:
            backbone = make(None if not fixed else tuple(math.ceil(s / reduction) for s in inner.input_size[1:]))
        except Exception as e:  # noqa: BLE001 - a grid it cannot take (an assert): its own, probed below
            if not fixed or isinstance(e, OSError):  # not a size problem (weights offline, a missing file)
                raise
            backbone = make(tuple(inner.input_size[1:]))
    elif not isinstance(backbone, nn.Module):
        raise TypeError(f'backbone must be a timm model name or nn.Module, got {type(backbone).__name__}')
    else:
        # the caller's network stays as it was, and still runs; without timm's contract, cut before its head
        given = backbone = adapt_classifier(copy.deepcopy(backbone))
        make = lambda il_size: given  # noqa: E731
    if num_classes is not None and num_classes != backbone.num_classes:
        backbone.reset_classifier(num_classes)
    grid = getattr(getattr(backbone, 'patch_embed', None), 'img_size', None)
    image = getattr(backbone, 'pretrained_cfg', {}).get('input_size', (3, 224, 224))[1:]
    sizes = il_sizes(image, grid, reduction)
    try:
        fitted, size, layout, readers = probe_backbone(make, sizes, in_chans, model_name(backbone))
    except BackboneError:
        raise
    except Exception as e:  # building it for another grid failed: a clear error, not the constructor's
        raise BackboneError(f'{model_name(backbone)} cannot be built for IL ({share_in_words(reduction)} the image): '
                          f'{type(e).__name__}: {e}') from e
    # IL sizes it did not run at: an image of r times one is refused by name at the forward
    return fitted, size, layout, readers, [list(s) for s in sizes[:sizes.index(size)]]
