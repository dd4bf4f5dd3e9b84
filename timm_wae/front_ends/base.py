"""The front-end interface: an image in, IL and IH out (each 1/``reduction`` of its side), and back where possible.

Every front end (the learned WAEs, the fixed wavelets, the resize baseline) is a ``FrontEnd``:

* ``forward(x) -> (low, high)``: IL [B, low_chans, ceil(H/r), ceil(W/r)] (r = ``reduction``: 2 for the WAE, 4
  for 'wae4') for the full network and IH [B, high_chans, ...] for the quarter-width branch or the backbone's
  first conv, or None when it makes no detail image;
* ``reconstruct(low, high, size)``: the image again (a decoder or an inverse transform), where
  ``can_reconstruct``; otherwise it raises;
* ``learned``: trained with the transform loss (through a decoder, which a classifier carries only
  when asked: ``attach_decoder``); ``low_name``: what IL is, for figure titles;
* ``norm_low`` / ``norm_high``: the non-affine standardisation of IL and IH before the networks
  (``WAEWrapper(standardize=True)``); ``forward`` returns the sub-images before it;
* ``reparameterize()`` (what ``timm.utils.reparameterize_model`` calls): the inference form. The
  standardisation's eval statistics are folded exactly into the front end's last linear layer
  where it has one (every front end but resize), and the decoder is dropped.

So the wrapper, the recipes and the pictures ask a front end what it can do instead of branching
on its name; the name only picks the class (``front_end_class``, ``create_front_end``).
"""
from typing import Optional, Tuple

import torch
from timm.layers import register_notrace_function, register_notrace_module
from torch import Tensor, nn

__all__ = ['FrontEnd', 'LearnedFrontEnd', 'check_image']


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


@register_notrace_module  # torch.fx (create_feature_extractor) calls a front end as one leaf: its input checks and
class FrontEnd(nn.Module):  # size-dependent padding are Python decisions, not ops to record
    """Base class: subclasses set ``low_chans`` / ``high_chans`` (0: no IH) and implement ``forward``."""

    learned: bool = False
    can_reconstruct: bool = True
    low_name: str = 'IL'
    makes_ih: bool = True               # False: no detail image (high_chans == 0)
    first_layer: Optional[str] = None   # the front end's first conv (a model's pretrained_cfg['first_conv'])
    reduction: int = 2                  # IL and IH have 1/reduction of the image's side
    # IL's DC gain over the image average-pooled to IL's size (Haar: 2 per level); None when it has none
    # (a learned front end from a random start). The standardisation's eval statistics start at it, so a
    # converted network starts where it was (``WAEWrapper.from_trained``).
    low_gain: Optional[float] = None

    def __init__(self, low_chans: int, high_chans: int):
        super().__init__()
        self.low_chans, self.high_chans = low_chans, high_chans
        self.norm_low: nn.Module = nn.Identity()
        self.norm_high: nn.Module = nn.Identity()
        self.reparameterized = False

    def standardize_outputs(self, low: bool, high: bool) -> None:
        """Non-affine BatchNorm on IL (and IH) before the networks, as the authors' released model."""
        self.norm_low = nn.BatchNorm2d(self.low_chans, affine=False) if low else nn.Identity()
        if low and self.low_gain is not None:
            self.norm_low.running_var.fill_(self.low_gain ** 2)
        self.norm_high = nn.BatchNorm2d(self.high_chans, affine=False) if high and self.high_chans else nn.Identity()

    def forward(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        raise NotImplementedError

    @torch.jit.unused
    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the standardisation (its running statistics) into the last linear layer, drop the
        decoder. Outputs change meaning: ``forward`` then returns the standardised sub-images. Once:
        a second call means the caller lost track of which form it holds."""
        if self.reparameterized:
            raise RuntimeError(f'this {type(self).__name__} front end is already in its inference form '
                               f'(reparameterized): use the model as it is; reparameterize a trained model once')
        scale_low, shift_low = _affine(self.norm_low, self.low_chans)
        scale_high, shift_high = _affine(self.norm_high, self.high_chans)
        if (isinstance(self.norm_low, nn.BatchNorm2d) or isinstance(self.norm_high, nn.BatchNorm2d)) and \
                self._fold_output(scale_low, shift_low, scale_high, shift_high):
            self.norm_low, self.norm_high = nn.Identity(), nn.Identity()
        if hasattr(self, 'decoder'):
            del self.decoder
        self.can_reconstruct = False
        self.reparameterized = True

    def _fold_output(self, scale_low: Tensor, shift_low: Tensor, scale_high: Tensor, shift_high: Tensor) -> bool:
        """Make ``forward`` return (low * scale_low + shift_low, high * scale_high + shift_high), per
        channel; False where the front end has no linear last layer to fold into."""
        return False

    @torch.jit.unused
    def reconstruct(self, low: Tensor, high: Optional[Tensor], size: Optional[Tuple[int, int]] = None) -> Tensor:
        """The image of size ``size`` (the input's H, W) from ``forward``'s output."""
        raise NotImplementedError(f'the {type(self).__name__} front end cannot reconstruct the image')


def _affine(norm: nn.Module, chans: int) -> Tuple[Tensor, Tensor]:
    """(scale, shift) per channel of a non-affine BatchNorm in eval mode; (1, 0) for Identity."""
    if not isinstance(norm, nn.BatchNorm2d):
        return torch.ones(chans), torch.zeros(chans)
    scale = (norm.running_var.double() + norm.eps).rsqrt()
    return scale.float(), (-norm.running_mean.double() * scale).float()


def in_callers_layout(caller: Tensor, low: Tensor, high: Tensor) -> Tuple[Tensor, Tensor]:
    """The learned front ends compute in channels_last on CPU; their outputs go back in the layout of
    the caller's image (a model run channels_last end to end stays channels_last)."""
    if caller.is_contiguous(memory_format=torch.channels_last) and not caller.is_contiguous():
        return low.contiguous(memory_format=torch.channels_last), high.contiguous(memory_format=torch.channels_last)
    return low.contiguous(), high.contiguous()


def conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1)


class LearnedFrontEnd(FrontEnd):
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
