"""The front-end interface: an image in, two half-resolution images out, and back where possible.

Every front end (the learned WAEs, the fixed wavelets, the resize baseline) is a ``FrontEnd``:

* ``forward(x) -> (low, high)``: IL [B, low_chans, ceil(H/2), ceil(W/2)] for the full network and
  IH [B, high_chans, ...] for the quarter-width branch, or None when it makes no detail image;
* ``reconstruct(low, high, size)``: the image again (a decoder or an inverse transform), where
  ``can_reconstruct``; otherwise it raises;
* ``learned``: trained with the transform loss (it has a decoder); ``low_name``: what IL is, for
  figure titles.

So the wrapper, the recipes and the pictures ask a front end what it can do instead of branching
on its name; the name only picks the class (``create_front_end``).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ['FrontEnd', 'create_front_end', 'FRONT_ENDS']

FRONT_ENDS = ('wae', 'wae2', 'dwt97', 'haar', 'resize')


class FrontEnd(nn.Module):
    """Base class: subclasses set ``low_chans`` / ``high_chans`` (0: no IH) and implement ``forward``."""

    learned: bool = False
    can_reconstruct: bool = True
    low_name: str = 'IL'

    def __init__(self, low_chans: int, high_chans: int):
        super().__init__()
        self.low_chans, self.high_chans = low_chans, high_chans

    def forward(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        raise NotImplementedError

    @torch.jit.unused
    def reconstruct(self, low: Tensor, high: Optional[Tensor], size: Optional[Tuple[int, int]] = None) -> Tensor:
        """The image of size ``size`` (the input's H, W) from ``forward``'s output."""
        raise NotImplementedError(f'the {type(self).__name__} front end cannot reconstruct the image')


def create_front_end(name: str, in_chans: int = 3, width: int = 16) -> FrontEnd:
    """The front end called ``name`` for ``in_chans``-channel images; ``width``: a WAE's inner channels."""
    from .autoencoder import HalfResolutionWAE, WaveletLikeAutoEncoder  # they subclass FrontEnd: no cycle at import
    from .baselines import ResizeFrontEnd
    from .wavelets import DWT97, HaarDWT
    builders = {
        'wae': lambda: WaveletLikeAutoEncoder(in_chans, width),
        'wae2': lambda: HalfResolutionWAE(in_chans, width),
        'dwt97': lambda: DWT97(in_chans),
        'haar': lambda: HaarDWT(in_chans),
        'resize': lambda: ResizeFrontEnd(in_chans),
    }
    if name not in builders:
        raise ValueError(f'unknown front_end {name!r}; expected one of {FRONT_ENDS}')
    return builders[name]()
