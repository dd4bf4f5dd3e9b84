"""Front ends: an image in, IL and IH out (``base.FrontEnd``), one module per kind, and their name table.

The wrapper, the recipes and the pictures ask a front end what it can do instead of branching on its name;
the name only picks the class here.
"""
from typing import Dict, Type

from .autoencoder import WaveletLikeAutoEncoder
from .base import FrontEnd, LearnedFrontEnd, check_image
from .haar_start import HalfResolutionWAE, QuarterResolutionWAE
from .loss import TransformLoss, TransformLossTerms
from .resize import ResizeFrontEnd
from .wavelets import DWT97, HaarDWT

__all__ = ['FrontEnd', 'LearnedFrontEnd', 'FRONT_ENDS', 'front_end_class', 'create_front_end', 'check_image',
           'TransformLoss', 'TransformLossTerms', 'WaveletLikeAutoEncoder', 'HalfResolutionWAE',
           'QuarterResolutionWAE', 'DWT97', 'HaarDWT', 'ResizeFrontEnd']

# what a model's ``front_end=`` may name; 'wae2' / 'wae4': the image's side divided by 2 / 4
_CLASSES: Dict[str, Type[FrontEnd]] = {
    'wae': WaveletLikeAutoEncoder,      # the paper's learned WAE
    'wae2': HalfResolutionWAE,          # learned, starts as one Haar level
    'wae4': QuarterResolutionWAE,       # learned, starts as two Haar levels
    'dwt97': DWT97,                     # Wavelet+CNN baseline (fixed CDF 9/7)
    'haar': HaarDWT,                    # fixed Haar
    'resize': ResizeFrontEnd,           # IR baseline: no IH
}
FRONT_ENDS = tuple(_CLASSES)


def front_end_class(name: str) -> Type[FrontEnd]:
    """The class of the front end called ``name`` (ask it ``learned`` without building one)."""
    if name not in _CLASSES:
        raise ValueError(f'unknown front_end {name!r}; expected one of {FRONT_ENDS}')
    return _CLASSES[name]


def create_front_end(name: str, in_chans: int = 3, width: int = 16, decoder: bool = True) -> FrontEnd:
    """The front end called ``name`` for ``in_chans``-channel images; ``width``: a learned WAE's inner
    channels; ``decoder``: whether a learned one gets its decoder (to train it with the transform loss)."""
    cls = front_end_class(name)
    return cls(in_chans, width, decoder=decoder) if cls.learned else cls(in_chans)
