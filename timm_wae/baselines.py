"""Front ends for the paper's baselines, interchangeable with the learned WAE in WAEWrapper.

Every front end maps an image to (low, high): ``low`` goes into the full backbone, ``high`` (or
None) into the quarter-width branch. Keeping the baselines behind the same interface means they
share the classifier structure, the training recipe and the measurement code with the WAE.
"""
import math
from typing import Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from .autoencoder import HalfResolutionWAE, WaveletLikeAutoEncoder
from .wavelets import DWT97, HaarDWT

__all__ = ['ResizeFrontEnd', 'create_front_end', 'FRONT_ENDS', 'LEARNED_FRONT_ENDS']


class ResizeFrontEnd(nn.Module):
    """IR baseline: the image resized to half resolution (antialiased bilinear), no detail image."""

    def forward(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        size = (math.ceil(x.shape[-2] / 2), math.ceil(x.shape[-1] / 2))
        return F.interpolate(x, size=size, mode='bilinear', antialias=True, align_corners=False), None


FRONT_ENDS = ('wae', 'wae2', 'dwt97', 'haar', 'resize')
LEARNED_FRONT_ENDS = ('wae', 'wae2')  # trained with the transform loss; have a decoder


def create_front_end(name: str, in_chans: int = 3, wae_width: int = 16) -> Tuple[nn.Module, int, int]:
    """Return (front end, channels of the low image, channels of the high image; 0 for none)."""
    if name == 'wae':
        return WaveletLikeAutoEncoder(in_chans, wae_width, 3), 3, 3
    if name == 'wae2':
        return HalfResolutionWAE(in_chans, wae_width), in_chans, 3 * in_chans
    if name == 'haar':
        return HaarDWT(in_chans), in_chans, 3 * in_chans
    if name == 'dwt97':
        return DWT97(), in_chans, 3 * in_chans  # cA; cH/cV/cD per channel
    if name == 'resize':
        return ResizeFrontEnd(), in_chans, 0
    raise ValueError(f'unknown front_end {name!r}; expected one of {FRONT_ENDS}')
