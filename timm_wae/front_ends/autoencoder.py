"""The front end ``'wae'``: the Wavelet-like Auto-Encoder of Chen et al., AAAI 2018.

The encoder splits an image into two half-resolution images: IL (content, fed to the full
network) and IH (details, pushed towards zero energy so that a quarter-width network suffices).
The decoder rebuilds the image from both; it exists only to train the encoder (transform loss)
and never runs at inference.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import LearnedFrontEnd, check_image, conv3x3, in_callers_layout

__all__ = ['WAEEncoder', 'WAEDecoder', 'WaveletLikeAutoEncoder']


class WAEEncoder(nn.Module):
    """Three 3x3 stride-1 convs (16 channels, ReLU) at full resolution, then two stride-2 branch
    convs without activation that give IL and IH.

    The full-resolution convs have few channels, a shape that oneDNN runs several times faster
    in channels_last than in NCHW on CPU (measured on this project's CPU: 16 ms vs 3 ms at batch 1), so the stem
    always computes in channels_last, whatever the caller's memory format (IL and IH come back in the caller's).
    """

    def __init__(self, in_chans: int = 3, width: int = 16, out_chans: int = 3):
        super().__init__()
        self.in_chans = in_chans
        self.stem = nn.Sequential(
            conv3x3(in_chans, width), nn.ReLU(inplace=True),
            conv3x3(width, width), nn.ReLU(inplace=True),
            conv3x3(width, width), nn.ReLU(inplace=True),
        )
        self.to_low = conv3x3(width, out_chans, stride=2)
        self.to_high = conv3x3(width, out_chans, stride=2)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        check_image(x, self.in_chans)
        y = x.contiguous(memory_format=torch.channels_last) if x.device.type == 'cpu' else x
        y = self.stem(y)
        # to_low and to_high as one 6-channel conv: the 16-channel full-resolution map is read once
        # (half the time of two 3-channel convs on this CPU); the same parameters, so the same function
        b_low, b_high = self.to_low.bias, self.to_high.bias
        assert b_low is not None and b_high is not None  # built with biases; TorchScript needs the refinement
        both = F.conv2d(y, torch.cat([self.to_low.weight, self.to_high.weight]), torch.cat([b_low, b_high]),
                        stride=2, padding=1)
        n = self.to_low.out_channels
        return in_callers_layout(x, both[:, :n], both[:, n:])


class _DecoderBranch(nn.Sequential):
    """4x4 stride-2 transposed conv (x2 upsampling), then three 3x3 convs."""

    def __init__(self, in_chans: int, width: int, out_chans: int):
        super().__init__(
            nn.ConvTranspose2d(in_chans, width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            conv3x3(width, width), nn.ReLU(inplace=True),
            conv3x3(width, width), nn.ReLU(inplace=True),
            conv3x3(width, out_chans),
        )


class WAEDecoder(nn.Module):
    """Two branches of the same shape, one per sub-image; their outputs are summed to I'."""

    def __init__(self, in_chans: int = 3, width: int = 16, out_chans: int = 3):
        super().__init__()
        self.from_low = _DecoderBranch(in_chans, width, out_chans)
        self.from_high = _DecoderBranch(in_chans, width, out_chans)

    def forward(self, low: Tensor, high: Tensor, size: Optional[Tuple[int, int]] = None) -> Tensor:
        """``size`` is the input's (H, W): the x2 upsampling overshoots odd sizes by one pixel."""
        out = self.from_low(low) + self.from_high(high)
        if size is not None:
            out = out[..., :size[0], :size[1]]
        return out


class WaveletLikeAutoEncoder(LearnedFrontEnd):
    """Encoder + decoder (front end ``'wae'``). ``forward`` returns (IL, IH); ``reconstruct`` runs
    the decoder."""

    first_layer = 'encoder.stem.0'

    def __init__(self, in_chans: int = 3, width: int = 16, sub_chans: int = 3, decoder: bool = True):
        super().__init__(sub_chans, sub_chans)
        self.in_chans, self.width = in_chans, width
        self.encoder = WAEEncoder(in_chans, width, sub_chans)
        if decoder:
            self.attach_decoder()

    def _make_decoder(self) -> nn.Module:
        return WAEDecoder(self.low_chans, self.width, self.in_chans)

    def _fold_output(self, scale_low: Tensor, shift_low: Tensor, scale_high: Tensor, shift_high: Tensor) -> bool:
        for conv, scale, shift in ((self.encoder.to_low, scale_low, shift_low),
                                   (self.encoder.to_high, scale_high, shift_high)):
            conv.weight.mul_(scale.to(conv.weight)[:, None, None, None])
            conv.bias.mul_(scale.to(conv.bias)).add_(shift.to(conv.bias))
        return True


