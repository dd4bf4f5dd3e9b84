"""The front ends ``'wae2'`` and ``'wae4'``: the cheap learned WAE that starts as the exact Haar DWT.

The digit is how much the image's side shrinks: ``'wae2'`` (``HalfResolutionWAE``) halves it with one
Haar level, ``'wae4'`` (``QuarterResolutionWAE``) quarters it with two.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import LearnedFrontEnd, check_image, conv3x3, in_callers_layout
from .wavelets import haar_matrix, pad_to_multiple

__all__ = ['HaarStartEncoder', 'HaarStartDecoder', 'HalfResolutionWAE', 'QuarterResolutionWAE']


class _Refine(nn.Module):
    """A residual correction at half resolution: x + conv3x3(ReLU(conv3x3(x))), the last conv
    zero-initialised so that the module starts as the identity."""

    def __init__(self, chans: int, width: int):
        super().__init__()
        self.conv1 = conv3x3(chans, width)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, chans)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class HaarStartEncoder(nn.Module):
    """Space-to-depth by s = 2**levels, a learned 1x1 analysis that starts as the exact ``levels``-level
    Haar DWT, then a residual 3x3 refinement at 1/s of the side (starts at zero).

    Every conv runs on 1/s² of the pixels: at one level and 224 px (width 16) it costs 45 MMAC where
    the paper's encoder costs 264 (17 %), and about 16 % of its time on this project's CPU. Before
    training ``forward`` *is* the orthonormal Haar DWT (``HaarDWT`` for one level), so a learned
    encoder can only move away from the fixed wavelet if that lowers the training loss.
    """

    def __init__(self, in_chans: int = 3, width: int = 16, levels: int = 1):
        super().__init__()
        self.in_chans, self.factor = in_chans, 2 ** levels
        n = in_chans * self.factor ** 2
        self.analysis = nn.Conv2d(n, n, 1, bias=False)
        with torch.no_grad():
            self.analysis.weight.copy_(haar_matrix(in_chans, levels)[:, :, None, None])
        self.refine = _Refine(n, width)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        check_image(x, self.in_chans)
        y = F.pixel_unshuffle(pad_to_multiple(x, self.factor), self.factor)
        if y.device.type == 'cpu':  # 12/16-channel convs: channels_last is ~1.5x faster in oneDNN (measured)
            y = y.contiguous(memory_format=torch.channels_last)
        y = self.refine(self.analysis(y))
        low, high = in_callers_layout(x, y[:, :self.in_chans], y[:, self.in_chans:])
        return low, high


class HaarStartDecoder(nn.Module):
    """The encoder's mirror: residual refinement, a 1x1 synthesis that starts as the inverse Haar
    (the analysis matrix transposed), depth-to-space."""

    def __init__(self, in_chans: int = 3, width: int = 16, levels: int = 1):
        super().__init__()
        self.factor = 2 ** levels
        n = in_chans * self.factor ** 2
        self.refine = _Refine(n, width)
        self.synthesis = nn.Conv2d(n, n, 1, bias=False)
        with torch.no_grad():
            self.synthesis.weight.copy_(haar_matrix(in_chans, levels).t()[:, :, None, None])

    def forward(self, low: Tensor, high: Tensor, size: Optional[Tuple[int, int]] = None) -> Tensor:
        out = F.pixel_shuffle(self.synthesis(self.refine(torch.cat([low, high], dim=1))), self.factor)
        return out if size is None else out[..., :size[0], :size[1]]


class HalfResolutionWAE(LearnedFrontEnd):
    """A cheap WAE (front end ``'wae2'``: the image to half its side): IL is C channels, IH the 3C
    detail channels, as in the Haar DWT it starts from; the decoder starts as the exact inverse, so
    Lt's reconstruction term is zero before training and only the energy term moves the split."""

    levels = 1
    reduction = 2
    low_gain = 2.0  # the orthonormal Haar's cA is s x the s x s block's mean (s = reduction)
    first_layer = 'encoder.analysis'

    def __init__(self, in_chans: int = 3, width: int = 16, decoder: bool = True):
        factor = 2 ** self.levels
        super().__init__(in_chans, (factor ** 2 - 1) * in_chans)
        self.in_chans, self.width = in_chans, width
        self.encoder = HaarStartEncoder(in_chans, width, self.levels)
        if decoder:
            self.attach_decoder()

    def _make_decoder(self) -> nn.Module:
        """Starts as the exact inverse of the encoder's Haar start (its refinement's last conv is zero)."""
        return HaarStartDecoder(self.in_chans, self.width, self.levels)

    def _fold_output(self, scale_low: Tensor, shift_low: Tensor, scale_high: Tensor, shift_high: Tensor) -> bool:
        """y = refine(analysis(x)) scaled by S and shifted by B: the analysis rows and the refinement's
        output conv take S, its input conv 1/S (so it still sees the unscaled y), its bias B."""
        enc = self.encoder
        w = enc.analysis.weight
        scale, shift = torch.cat([scale_low, scale_high]).to(w), torch.cat([shift_low, shift_high]).to(w)
        w.mul_(scale[:, None, None, None])
        enc.refine.conv1.weight.div_(scale[None, :, None, None])
        enc.refine.conv2.weight.mul_(scale[:, None, None, None])
        enc.refine.conv2.bias.mul_(scale).add_(shift)
        return True


class QuarterResolutionWAE(HalfResolutionWAE):
    """``'wae4'``: the same learned front end at two Haar levels, the image to a quarter of its side.

    Two Haar levels are an orthogonal transform of each 4x4 pixel block, so IL (the cA of the cA,
    C channels) and IH (the 15C detail channels of both levels) keep every pixel's information at a
    sixteenth of the pixels, which a network run at a quarter of the size cannot.
    """

    levels = 2
    reduction = 4
    low_gain = 4.0
