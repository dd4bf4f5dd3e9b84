"""Probing a backbone at construction: which IL size it runs at, its feature layout, which layer fails.

WAEWrapper builds its networks for IL (the image over the front end's reduction), checks them with one
forward each and refuses, by layer and reason, what does not run: never a failure at the first forward.
"""
import math
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..util import BackboneError, first_line

__all__ = ['run_named', 'il_sizes', 'feature_layout', 'probe_backbone', 'check_runs']


@contextmanager
def _trace_calls(model: nn.Module) -> Iterator[Tuple[List[str], set]]:
    """Record the stack of modules being run (to name a failing layer) and which ran at all."""
    stack: List[str] = []
    called: set = set()
    handles = []
    for name, m in model.named_modules():
        def pre(_m, _inp, n=name):
            stack.append(n)
            called.add(n)

        def post(_m, _inp, _out):
            stack.pop()
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        yield stack, called
    finally:
        for h in handles:
            h.remove()


def run_named(model: nn.Module, fn: Callable[[], torch.Tensor]
              ) -> Tuple[Optional[torch.Tensor], str, Optional[BaseException], set]:
    """``fn()`` in eval mode without gradients: (output, '', None, the layers that ran) or (None, the
    innermost layer that was running, the exception, the layers that ran). The training mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _trace_calls(model) as (stack, called):
            try:
                return fn(), '', None, called
            except Exception as e:  # noqa: BLE001 - any failure inside (RuntimeError, AssertionError, ...)
                return None, (stack[-1] if stack else '') or '<root>', e, called
    finally:
        model.train(was_training)


def il_sizes(image_size: Sequence[int], grid: Optional[Sequence[int]] = None,
             reduction: int = 2) -> List[Tuple[int, int]]:
    """IL sizes to try, best first: the backbone's image over the front end's reduction (IL of its usual
    input); that rounded up to a multiple of 64 (HRNet, DLA and windowed attention need one); a fixed token
    grid's; the backbone's own size (a grid that does not shrink: the WAE model then takes larger images)."""
    sizes = [tuple(math.ceil(s / reduction) for s in image_size),
             tuple(64 * max(math.ceil(s / (64 * reduction)), 1) for s in image_size)]
    sizes += ([tuple(grid)] if grid else []) + [tuple(image_size)]
    return list(dict.fromkeys(tuple(int(s) for s in size) for size in sizes))


def feature_layout(out: torch.Tensor, num_features: int, model_name: str) -> str:
    """'NCHW', 'NHWC' (Swin, MambaOut) or 'NLC' (tokens, with or without prefix tokens) from one output."""
    if not isinstance(out, torch.Tensor):
        raise BackboneError(f'{model_name}.forward_features returns a {type(out).__name__}, not one tensor; WAEWrapper '
                          f'needs NCHW or NHWC maps or [B, tokens, C] tokens to join IL and IH')
    if out.ndim == 3:
        return 'NLC'
    if out.ndim == 4:
        return 'NHWC' if out.shape[1] != num_features and out.shape[-1] == num_features else 'NCHW'
    raise BackboneError(f'{model_name}.forward_features returns shape {tuple(out.shape)}; WAEWrapper needs NCHW or '
                        f'NHWC maps or [B, tokens, C] tokens to join IL and IH')


def probe_backbone(make: Callable[[Optional[Tuple[int, int]]], nn.Module], sizes: Sequence[Tuple[int, int]],
                   in_chans: int, model_name: str) -> Tuple[nn.Module, Tuple[int, int], str, List[str]]:
    """The first IL size in ``sizes`` at which the backbone runs: (backbone, size, layout, the convs that read
    the input). ``make(size)`` gives the backbone for a size (rebuilt for a fixed grid, else the same one)."""
    tried = []
    for size in sizes:
        try:
            backbone = make(size)
        except Exception as e:  # noqa: BLE001 - a fixed grid that cannot be built for this size (an assert)
            tried.append(f'{size[0]}x{size[1]} (cannot be built for it: {first_line(e)})')
            continue
        p = next(backbone.parameters())
        x = torch.zeros(1, in_chans, *size, device=p.device, dtype=p.dtype)
        readers: List[str] = []
        hooks = [m.register_forward_pre_hook(lambda _m, inp, n=n: readers.append(n) if inp and inp[0] is x else None)
                 for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
        try:
            out, layer, e, _ = run_named(backbone, lambda: backbone.forward_features(x))
        finally:
            for h in hooks:
                h.remove()
        if e is None:
            return backbone, size, feature_layout(out, getattr(backbone, 'num_features', -1), model_name), readers
        tried.append(f'{size[0]}x{size[1]} (layer {layer!r}: {first_line(e)})')
    raise BackboneError(f'{model_name} does not run on IL (half the image) at any size tried: ' + '; '.join(tried))


def check_runs(model: nn.Module, x: torch.Tensor, expected: Optional[Tuple[int, ...]], what: str) -> None:
    """One forward of the built model at construction; a failure is a BackboneError naming the layer."""
    out, layer, e, _ = run_named(model, lambda: model(x))
    if e is not None:
        raise BackboneError(f'{what} does not run on a {"x".join(map(str, x.shape[1:]))} image: layer {layer!r} '
                          f'failed ({first_line(e)})') from e
    if expected is not None and tuple(out.shape) != tuple(expected):
        raise BackboneError(f'{what} gives an output of shape {tuple(out.shape)} for a '
                          f'{"x".join(map(str, x.shape[1:]))} image, not {tuple(expected)}')
