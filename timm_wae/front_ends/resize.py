"""The front end ``'resize'``: the paper's IR baseline (the wavelet baselines are in ``wavelets.py``).

It shares the ``FrontEnd`` interface with the learned WAE, so the baseline shares the classifier
structure, the training recipe and the measurement code with it.
"""
import math
from typing import Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

from .base import FrontEnd

__all__ = ['ResizeFrontEnd']


class ResizeFrontEnd(FrontEnd):
    """IR baseline: the image resized to half resolution (antialiased bilinear), no detail image."""

    can_reconstruct = False
    makes_ih = False
    low_gain = 1.0
    low_name = 'IL = resized'

    def __init__(self, in_chans: int = 3):
        super().__init__(in_chans, 0)

    def forward(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        size = (math.ceil(x.shape[-2] / 2), math.ceil(x.shape[-1] / 2))
        return F.interpolate(x, size=size, mode='bilinear', antialias=True, align_corners=False), None
