"""The Wavelet-like Auto-Encoder (WAE) of Chen et al., AAAI 2018.

The encoder splits an image into two half-resolution images: IL (content, fed to the full
network) and IH (details, pushed towards zero energy so that a quarter-width network suffices).
The decoder rebuilds the image from both; it exists only to train the encoder (transform loss)
and never runs at inference.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor, nn

from .front_ends import FrontEnd
from .wavelets import haar_matrix, pad_to_multiple

__all__ = ['WAEEncoder', 'WAEDecoder', 'WaveletLikeAutoEncoder', 'TransformLoss', 'TransformLossTerms',
           'HalfResolutionWAE', 'QuarterResolutionWAE', 'check_image']


@register_notrace_function  # torch.fx records the call (the check runs in the traced module) instead of tracing it
def check_image(x: Tensor, in_chans: int, what: str = 'image batch') -> None:
    """Fail early, with a message naming the problem, before any convolution sees a bad input.

    Written with string concatenation so that TorchScript compiles it (no tuple() in f-strings).
    """
    if not torch.jit.is_scripting() and not isinstance(x, Tensor):
        raise TypeError(f'expected a torch.Tensor {what} [B, {in_chans}, H, W], got {type(x).__name__}')
    if torch.jit.is_tracing():  # a trace records ops, not Python checks (they would warn and bake in constants)
        return
    layout = what + ' [B, ' + str(in_chans) + ', H, W]'
    if x.dim() != 4:
        raise ValueError('expected a 4-D ' + layout + ', got a ' + str(x.dim()) + '-D tensor of shape '
                         + str(list(x.shape)))
    if x.shape[1] != in_chans:
        raise ValueError('expected ' + str(in_chans) + ' input channels (' + layout + '), got ' + str(x.shape[1])
                         + ' channels in shape ' + str(list(x.shape)))
    if x.shape[-2] < 2 or x.shape[-1] < 2:
        raise ValueError('expected an image of at least 2x2 pixels, got ' + str(list(x.shape[-2:])))
    if not x.is_floating_point():
        raise TypeError('expected a floating point ' + what + ', got dtype ' + str(x.dtype)
                        + ' (normalise images first)')


def _in_callers_layout(caller: Tensor, low: Tensor, high: Tensor) -> Tuple[Tensor, Tensor]:
    """The learned front ends compute in channels_last on CPU; their outputs go back in the layout of
    the caller's image (a model run channels_last end to end stays channels_last)."""
    if caller.is_contiguous(memory_format=torch.channels_last) and not caller.is_contiguous():
        return low.contiguous(memory_format=torch.channels_last), high.contiguous(memory_format=torch.channels_last)
    return low.contiguous(), high.contiguous()


def _conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1)


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
            _conv3x3(in_chans, width), nn.ReLU(inplace=True),
            _conv3x3(width, width), nn.ReLU(inplace=True),
            _conv3x3(width, width), nn.ReLU(inplace=True),
        )
        self.to_low = _conv3x3(width, out_chans, stride=2)
        self.to_high = _conv3x3(width, out_chans, stride=2)

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
        return _in_callers_layout(x, both[:, :n], both[:, n:])


class _DecoderBranch(nn.Sequential):
    """4x4 stride-2 transposed conv (x2 upsampling), then three 3x3 convs."""

    def __init__(self, in_chans: int, width: int, out_chans: int):
        super().__init__(
            nn.ConvTranspose2d(in_chans, width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            _conv3x3(width, width), nn.ReLU(inplace=True),
            _conv3x3(width, width), nn.ReLU(inplace=True),
            _conv3x3(width, out_chans),
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


@dataclass
class TransformLossTerms:
    """The transform loss and its two terms, kept apart so they can be logged."""
    loss: Tensor
    recon: Tensor
    energy: Tensor


class TransformLoss(nn.Module):
    """Lt = lr + λ·le with lr = mean((I − I')²) and le = mean(IH²).

    Both terms are per-element means (independent of batch and image size, so learning rates
    transfer between resolutions). The paper writes λ = 1 on squared norms, i.e. on sums; IH has a
    quarter of I's elements, so λ = 0.25 on means gives the authors' relative weighting, and is
    the default here. λ is a training choice, not part of a model: the recipes' config holds it.
    """

    def __init__(self, energy_weight: float = 0.25):
        super().__init__()
        self.energy_weight = energy_weight

    @torch.jit.unused  # a training loss: TorchScript (inference) never needs it
    def per_sample(self, image: Tensor, recon: Tensor, high: Tensor) -> TransformLossTerms:
        """The terms of each image, [B] each (evaluation gathers them across processes)."""
        lr = (recon.float() - image.float()).pow(2).flatten(1).mean(1)
        le = high.float().pow(2).flatten(1).mean(1)
        return TransformLossTerms(lr + self.energy_weight * le, lr, le)

    @torch.jit.unused
    def forward(self, image: Tensor, recon: Tensor, high: Tensor) -> TransformLossTerms:
        """The batch's terms: the mean of ``per_sample`` (every image has as many elements)."""
        t = self.per_sample(image, recon, high)
        return TransformLossTerms(t.loss.mean(), t.recon.mean(), t.energy.mean())


class _LearnedFrontEnd(FrontEnd):
    """A front end with an ``encoder`` (the forward) and, for training it with the transform loss, a
    ``decoder`` (``reconstruct``).

    The decoder never runs in ``forward``: a classifier built around the front end has it only when
    asked (``WAEWrapper(with_decoder=True)``, the recipes' stages 1 and 3, or ``attach_decoder()``),
    so that an ordinary training loop (or DDP) never carries parameters without gradients.
    """

    learned = True

    def __init__(self, low_chans: int, high_chans: int):
        super().__init__(low_chans, high_chans)
        self.can_reconstruct = False

    def _make_decoder(self) -> nn.Module:
        raise NotImplementedError

    @torch.jit.unused
    def attach_decoder(self) -> nn.Module:
        """Give the front end its decoder (a no-op when it has one); returns it. Build the optimizer after."""
        if self.reparameterized:
            raise RuntimeError(f'this {type(self).__name__} is in its inference form (reparameterized): it cannot '
                               f'get a decoder; train the unfolded model instead')
        if not hasattr(self, 'decoder'):
            self.decoder = self._make_decoder()
            p = next(self.encoder.parameters())
            self.decoder.to(device=p.device, dtype=p.dtype)
        self.can_reconstruct = True
        return self.decoder

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return self.encoder(x)

    @torch.jit.unused
    def reconstruct(self, low: Tensor, high: Optional[Tensor], size: Optional[Tuple[int, int]] = None) -> Tensor:
        if not hasattr(self, 'decoder'):
            if self.reparameterized:
                raise RuntimeError(f'this {type(self).__name__} is in its inference form (reparameterized: the '
                                   f'decoder was dropped) and cannot reconstruct; train or reconstruct with the '
                                   f'unfolded model')
            raise RuntimeError(f'this {type(self).__name__} has no decoder: build the model with with_decoder=True '
                               f'(or call front_end.attach_decoder() before building the optimizer) to reconstruct')
        return self.decoder(low, high, size)


class WaveletLikeAutoEncoder(_LearnedFrontEnd):
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


class _Refine(nn.Module):
    """A residual correction at half resolution: x + conv3x3(ReLU(conv3x3(x))), the last conv
    zero-initialised so that the module starts as the identity."""

    def __init__(self, chans: int, width: int):
        super().__init__()
        self.conv1 = _conv3x3(chans, width)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, chans)
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
        low, high = _in_callers_layout(x, y[:, :self.in_chans], y[:, self.in_chans:])
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


class HalfResolutionWAE(_LearnedFrontEnd):
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
