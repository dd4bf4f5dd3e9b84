"""Convert a trained classifier into a faster WAE model that starts exactly where the network was."""
from typing import Any

from torch import nn

from .front_ends import front_end_class

__all__ = ['from_trained']


def from_trained(network: nn.Module, front_end: str = 'wae2', ih_fusion: str = 'stem', model_cls: Any = None,
                 **kwargs: Any) -> nn.Module:
    """``WAEWrapper.from_trained``: the network is copied (the caller's module is untouched). In eval mode,
    before any training, the model's output is ``network(F.avg_pool2d(x, r))`` (r = 2 for 'wae2' and 'haar',
    4 for 'wae4'): IL's standardisation starts at the front end's gain over the pooled image, IH enters
    through zero weights (``ih_fusion='stem'``) or a fusion classifier that starts at zero (``'branch'``).
    Fine-tuning then learns what to take from IH (``recipes/configs/convert.yaml``).
    """
    if not isinstance(network, nn.Module):
        raise TypeError(f'from_trained converts a trained nn.Module, got {type(network).__name__}; '
                        f"for a timm name use WAEWrapper(name, pretrained_backbone=True)")
    if front_end_class(front_end).low_gain is None or not kwargs.get('standardize', True):
        raise ValueError(f"front_end={front_end!r} with standardize={kwargs.get('standardize', True)} cannot start "
                         f"where the network was (IL is not a known multiple of the pooled image): use "
                         f"front_end='wae2', 'wae4' or 'haar' with standardize=True")
    if model_cls is None:
        from .models import WAEWrapper as model_cls
    model = model_cls(network, front_end=front_end, ih_fusion=ih_fusion, **kwargs)
    fc = model.fusion_head.head.fc if model.fusion_head is not None else None
    if isinstance(fc, nn.Linear):
        nn.init.zeros_(fc.weight)
        nn.init.zeros_(fc.bias)
    return model
