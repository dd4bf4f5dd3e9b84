"""Differentiable single-level 2-D wavelet transforms (CDF 9/7 and Haar) for the Wavelet+CNN baselines.

``dwt2(x)`` equals ``pywt.dwt2(x, 'bior4.4', mode='periodization')`` per channel and
``idwt2`` equals ``pywt.idwt2(..., 'bior4.4', mode='periodization')``. ``bior4.4`` is the
CDF 9/7 wavelet of JPEG 2000 (same taps up to scale and sign). Both directions are one
circular pad plus one depthwise (``groups=C``) strided convolution whose kernel stacks the
four separable 2-D filters, so the transform runs on any device and passes gradients.
"""

from typing import Optional, Tuple

import pywt
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import FrontEnd

__all__ = ["DWT97", "HaarDWT", "dwt2", "idwt2", "haar_matrix", "pad_to_even", "pad_to_multiple"]

_TAPS = 9
# Circular padding that aligns the convolutions with pywt's periodization mode
# (found by comparing against pywt; the tests check it).
# (written as literals inside the functions, which TorchScript compiles: it cannot read global tuples)
#   analysis pad [4, 3, 4, 3]: (W left, W right, H left, H right)
#   synthesis pad 2: coefficient rows/columns wrapped on every side before upsampling
#   synthesis crop 7: conv_transpose2d padding that trims the wrapped margin


def _filter_bank(lo: Tensor, hi: Tensor) -> Tensor:
    """Stack the separable 2-D kernels in pywt's order cA, cH, cV, cD as [4, 1, 9, 9].

    Each kernel is outer(filter along H, filter along W): cH is high-pass along H
    (pywt's 'da'), cV high-pass along W ('ad').
    """
    pairs = ((lo, lo), (hi, lo), (lo, hi), (hi, hi))
    return torch.stack([torch.outer(a, b) for a, b in pairs]).unsqueeze(1)


def _taps(name: str) -> Tensor:
    # pywt stores the 9/7 filters as length 10 with a leading zero tap; dropping it
    # gives 9-tap kernels (19% fewer multiply-adds than 10x10).
    return torch.tensor(getattr(pywt.Wavelet("bior4.4"), name)[1:], dtype=torch.float64)


# conv2d is a cross-correlation, so the analysis filters are flipped; conv_transpose2d
# already applies the synthesis filters as a true convolution.
_ANALYSIS = _filter_bank(_taps("dec_lo").flip(0), _taps("dec_hi").flip(0))
_SYNTHESIS = _filter_bank(_taps("rec_lo"), _taps("rec_hi"))


def _check_image(x: Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D tensor [B, C, H, W], got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")


def _analysis(x: Tensor, bank: Tensor, bias: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """``bank``: the four filters [4, 1, k, k]; with a ``bias`` (a folded DWT97), one set per channel
    [4C, 1, k, k]."""
    _check_image(x, "dwt2")
    b, c, h, w = x.shape
    if not torch.jit.is_tracing() and (h % 2 or w % 2 or h < 4 or w < 4):  # a trace bakes in the example's size
        raise ValueError(
            f"dwt2: the periodized DWT needs even H and W (at least 4), got H={h}, W={w}"
        )
    if bias is None:
        weight = bank.to(x).repeat(c, 1, 1, 1)
    else:
        weight, bias = bank.to(x), bias.to(x)
    out = F.conv2d(F.pad(x, [4, 3, 4, 3], mode="circular"), weight, bias, stride=2, groups=c)
    out = out.view(b, c, 4, h // 2, w // 2)
    return out[:, :, 0], out[:, :, 1:].reshape(b, 3 * c, h // 2, w // 2)


def _synthesis(low: Tensor, high: Tensor, bank: Tensor) -> Tensor:
    _check_image(low, "idwt2 (low)")
    _check_image(high, "idwt2 (high)")
    b, c, h, w = low.shape
    if high.shape != (b, 3 * c, h, w):
        raise ValueError(
            f"idwt2: high must have shape (B, 3C, H, W) = {[b, 3 * c, h, w]} for low of shape "
            f"{list(low.shape)}, got {list(high.shape)}"
        )
    if h < 2 or w < 2:
        raise ValueError(f"idwt2: coefficients need H and W of at least 2, got H={h}, W={w}")
    coeffs = torch.cat([low.unsqueeze(2), high.reshape(b, c, 3, h, w)], dim=2)
    coeffs = F.pad(coeffs.reshape(b, 4 * c, h, w), [2, 2, 2, 2], mode="circular")
    weight = bank.to(low).repeat(c, 1, 1, 1)
    out = F.conv_transpose2d(coeffs, weight, stride=2, padding=7, groups=c)
    return out[..., : 2 * h, : 2 * w]  # the transposed conv yields one extra row and column


def dwt2(x: Tensor) -> Tuple[Tensor, Tensor]:
    """One level of the periodized CDF 9/7 DWT of ``x`` [B, C, H, W] (H, W even, >= 4).

    Returns ``(low, high)``: ``low`` (cA) is [B, C, H/2, W/2]; ``high`` (the details) is [B, 3C, H/2, W/2]
    with channels ``3c, 3c+1, 3c+2`` holding pywt's cH, cV, cD of input channel ``c``.
    Filters are moved to ``x``'s device on each call; ``DWT97`` keeps them there instead.
    """
    return _analysis(x, _ANALYSIS)


def idwt2(low: Tensor, high: Tensor) -> Tensor:
    """Invert ``dwt2``: rebuild [B, C, 2H, 2W] from ``low`` [B, C, H, W] and ``high`` [B, 3C, H, W]."""
    return _synthesis(low, high, _SYNTHESIS)


class DWT97(FrontEnd):
    """Fixed CDF 9/7 DWT as a front end, for the paper's Wavelet+CNN baseline.

    The baseline feeds cA (``low``) to the full-width network and the three detail bands of each
    channel (``high``) to the quarter-width branch. Nothing is learned: the filters are non-persistent buffers, so
    they follow ``.to()`` but stay out of ``state_dict`` and ``parameters()``.
    """

    analysis_bank: Tensor
    synthesis_bank: Tensor
    analysis_bias: Optional[Tensor]
    low_name = 'IL = cA'
    low_gain = 2.0  # the lowpass filters sum to sqrt(2) in each direction

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__(in_chans, 3 * in_chans)
        dtype = torch.get_default_dtype()
        self.register_buffer("analysis_bank", _ANALYSIS.to(dtype), persistent=False)
        self.register_buffer("synthesis_bank", _SYNTHESIS.to(dtype), persistent=False)
        self.register_buffer("analysis_bias", None, persistent=False)  # set by reparameterize()

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Return ``(low, high)`` exactly as ``dwt2``."""
        return _analysis(x, self.analysis_bank, self.analysis_bias)

    def _fold_output(self, scale_low: Tensor, shift_low: Tensor, scale_high: Tensor, shift_high: Tensor) -> bool:
        """One filter set per channel: output 4c + k is cA (k = 0) or detail k of channel c."""
        c = self.low_chans
        per_channel = lambda a, b: torch.cat([a[:, None], b.view(c, 3)], dim=1).reshape(4 * c)  # noqa: E731
        scale = per_channel(scale_low, scale_high).to(self.analysis_bank)
        self.analysis_bank = self.analysis_bank.repeat(c, 1, 1, 1) * scale[:, None, None, None]
        self.analysis_bias = per_channel(shift_low, shift_high).to(self.analysis_bank)
        return True

    def inverse(self, low: Tensor, high: Tensor) -> Tensor:
        """Rebuild the input from ``forward``'s output, exactly as ``idwt2``."""
        return _synthesis(low, high, self.synthesis_bank)

    @torch.jit.unused
    def reconstruct(self, low: Tensor, high: Optional[Tensor], size: Optional[Tuple[int, int]] = None) -> Tensor:
        out = self.inverse(low, high)
        return out if size is None else out[..., :size[0], :size[1]]


def haar_matrix(channels: int, levels: int = 1) -> Tensor:
    """The orthonormal Haar analysis as a [s²C, s²C] matrix on ``F.pixel_unshuffle(x, s)``'s channels,
    s = 2**levels (the side of the pixel block one output position covers).

    One level (s = 2): input channel ``4c + 2i + j`` holds pixel (i, j) of each 2x2 block of image
    channel ``c``. Output rows ``0..C-1`` are the cA of each channel, rows ``C + 3c, C + 3c + 1,
    C + 3c + 2`` its cH, cV, cD (pywt's 'haar' signs and order, the same layout as ``dwt2``).
    Two levels (s = 4): rows ``0..C-1`` are the cA of the cA (4x the 4x4 block's mean), the next
    3C rows the second level's details (same layout), the last 12C rows the first level's details
    at the quarter side (``pixel_unshuffle(details, 2)``). Orthonormal: the inverse is the transpose.
    """
    if levels == 1:
        block = torch.tensor([[1., 1., 1., 1.],      # cA
                              [1., 1., -1., -1.],    # cH: high-pass along H
                              [1., -1., 1., -1.],    # cV: high-pass along W
                              [1., -1., -1., 1.]],   # cD
                             dtype=torch.float64) / 2
        m = torch.zeros(4 * channels, 4 * channels, dtype=torch.float64)
        for c in range(channels):
            m[c, 4 * c:4 * c + 4] = block[0]
            m[channels + 3 * c:channels + 3 * c + 3, 4 * c:4 * c + 4] = block[1:]
        return m
    if levels != 2:
        raise ValueError(f'levels must be 1 or 2, got {levels!r}')
    # compose the one-level transform twice on the 16C basis images of one 4x4 block
    n = 16 * channels
    basis = F.pixel_shuffle(torch.eye(n, dtype=torch.float64).view(n, n, 1, 1), 4)   # [n, C, 4, 4]
    one = haar_matrix(channels)[:, :, None, None]
    level1 = F.conv2d(F.pixel_unshuffle(basis, 2), one)                               # [n, 4C, 2, 2]
    level2 = F.conv2d(F.pixel_unshuffle(level1[:, :channels], 2), one)                # [n, 4C, 1, 1]
    out = torch.cat([level2, F.pixel_unshuffle(level1[:, channels:], 2)], dim=1)      # [n, n, 1, 1]
    return out[:, :, 0, 0].t().contiguous()


def pad_to_even(x: Tensor) -> Tensor:
    """Repeat the last row / column of an odd-sized image (pywt's 'symmetric' mode for 2-tap filters)."""
    return pad_to_multiple(x, 2)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Repeat the last rows / columns until H and W are multiples of ``multiple`` (2: ``pad_to_even``)."""
    if torch.jit.is_tracing():  # a trace is for the example's size: no Python branch to bake in
        return x
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x


class HaarDWT(FrontEnd):
    """Fixed orthonormal Haar DWT: a 2x2 block transform, the cheapest wavelet front end.

    ``forward`` equals ``pywt.dwt2(x, 'haar', mode='symmetric')`` per channel (any H, W >= 2; odd
    sizes give ceil(H/2) x ceil(W/2)), in ``dwt2``'s layout. It costs 4 multiply-adds per pixel
    where the 9/7 DWT costs 4 x 81, and runs as one reshape and one small matrix product.
    """

    matrix: Tensor
    bias: Optional[Tensor]
    low_name = 'IL = cA'
    low_gain = 2.0  # the lowpass filters sum to sqrt(2) in each direction

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__(in_chans, 3 * in_chans)
        self.in_chans = in_chans
        self.register_buffer("matrix", haar_matrix(in_chans).to(torch.get_default_dtype()), persistent=False)
        self.register_buffer("bias", None, persistent=False)  # set by reparameterize()

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        _check_image(x, "HaarDWT")
        c = self.in_chans
        bias = self.bias
        if bias is not None:
            bias = bias.to(x.dtype)
        y = F.conv2d(F.pixel_unshuffle(pad_to_even(x), 2), self.matrix.to(x.dtype)[:, :, None, None], bias)
        return y[:, :c], y[:, c:]

    def _fold_output(self, scale_low: Tensor, shift_low: Tensor, scale_high: Tensor, shift_high: Tensor) -> bool:
        scale = torch.cat([scale_low, scale_high]).to(self.matrix)
        self.matrix = self.matrix * scale[:, None]
        self.bias = torch.cat([shift_low, shift_high]).to(self.matrix)
        return True

    @torch.jit.unused
    def reconstruct(self, low: Tensor, high: Optional[Tensor], size: Optional[Tuple[int, int]] = None) -> Tensor:
        """Rebuild the image; ``size`` (the input's H, W) trims the row / column an odd size added."""
        y = torch.cat([low, high], dim=1)
        out = F.pixel_shuffle(F.conv2d(y, self.matrix.to(y.dtype).t()[:, :, None, None]), 2)
        return out if size is None else out[..., : size[0], : size[1]]
