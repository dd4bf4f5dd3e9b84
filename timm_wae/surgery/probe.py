"""Probing a backbone at construction: which IL size it runs at, its feature layout, which layer fails.

WAEWrapper builds its networks for IL (the image over the front end's reduction), checks them with one
forward each and refuses, by layer and reason, what does not run: never a failure at the first forward.
"""
import copy
import math
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import timm
import torch
from torch import nn

__all__ = ['ShrinkError', 'run_named', 'first_line', 'il_sizes', 'feature_layout', 'probe_backbone', 'fit_backbone',
           'check_runs', 'model_name', 'share_in_words']


class ShrinkError(ValueError):
    """The backbone has a layer that the width rewrite cannot divide."""


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


def model_name(model: nn.Module) -> str:
    """The timm architecture a module was built as, for messages (its class name where it has none)."""
    return getattr(model, 'pretrained_cfg', {}).get('architecture') or type(model).__name__


def share_in_words(reduction: int) -> str:
    """What IL's side is of the image's, in words for messages: 'half', '1/4'."""
    return 'half' if reduction == 2 else f'1/{reduction}'


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f'{type(e).__name__}: {text[0] if text else ""}'[:300]


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
        raise ShrinkError(f'{model_name}.forward_features returns a {type(out).__name__}, not one tensor; WAEWrapper '
                          f'needs NCHW or NHWC maps or [B, tokens, C] tokens to join IL and IH')
    if out.ndim == 3:
        return 'NLC'
    if out.ndim == 4:
        return 'NHWC' if out.shape[1] != num_features and out.shape[-1] == num_features else 'NCHW'
    raise ShrinkError(f'{model_name}.forward_features returns shape {tuple(out.shape)}; WAEWrapper needs NCHW or NHWC '
                      f'maps or [B, tokens, C] tokens to join IL and IH')


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
    raise ShrinkError(f'{model_name} does not run on IL (half the image) at any size tried: ' + '; '.join(tried))


def check_runs(model: nn.Module, x: torch.Tensor, expected: Optional[Tuple[int, ...]], what: str) -> None:
    """One forward of the built model at construction; a failure is a ShrinkError naming the layer."""
    out, layer, e, _ = run_named(model, lambda: model(x))
    if e is not None:
        raise ShrinkError(f'{what} does not run on a {"x".join(map(str, x.shape[1:]))} image: layer {layer!r} '
                          f'failed ({first_line(e)})') from e
    if expected is not None and tuple(out.shape) != tuple(expected):
        raise ShrinkError(f'{what} gives an output of shape {tuple(out.shape)} for a '
                          f'{"x".join(map(str, x.shape[1:]))} image, not {tuple(expected)}')


def fit_backbone(backbone: Union[str, nn.Module], backbone_kwargs: Dict[str, Any], num_classes: Optional[int],
                 in_chans: int, reduction: int, pretrained: bool = False
                 ) -> Tuple[nn.Module, Tuple[int, int], str, List[str], List[List[int]]]:
    """The backbone (a timm name or ``torchvision:NAME``, built with ``backbone_kwargs`` and ``num_classes``, or a
    copy of a module, adapted when it has no timm contract: ``adapter.py``) built
    for an IL size it runs at: (backbone, IL size, feature layout, the convs that read its input, the IL sizes it
    did not run at). A fixed token grid (ViT, Swin) is rebuilt for each size tried; ShrinkError when none runs."""
    from .adapter import TORCHVISION_PREFIX, adapt_classifier, create_torchvision
    if isinstance(backbone, str) and backbone.startswith(TORCHVISION_PREFIX):
        if num_classes is not None:
            backbone_kwargs['num_classes'] = num_classes
        given = backbone = create_torchvision(backbone, pretrained, **backbone_kwargs)
        make = lambda il_size: given  # noqa: E731
    elif isinstance(backbone, str):
        if num_classes is not None:
            backbone_kwargs['num_classes'] = num_classes
        name, inner = backbone, timm.models.get_pretrained_cfg(backbone)
        # a fixed token grid (ViT, Swin): the backbone is built for IL, 1/reduction of the image's size
        fixed = inner is not None and inner.fixed_input_size and 'img_size' not in backbone_kwargs
        made: Dict[Any, nn.Module] = {}

        def make(il_size: Optional[Tuple[int, int]]) -> nn.Module:
            key = il_size if fixed else None
            if key not in made:
                from ..hub import create_backbone  # weights offline: a clear error at once
                made[key] = create_backbone(name, pretrained, in_chans=in_chans,
                                            **backbone_kwargs, **({'img_size': list(key)} if fixed else {}))
            return made[key]
        try:
            backbone = make(None if not fixed else tuple(math.ceil(s / reduction) for s in inner.input_size[1:]))
        except Exception as e:  # noqa: BLE001 - a grid it cannot take (an assert): its own, probed below
            if not fixed or isinstance(e, OSError):  # not a size problem (weights offline, a missing file)
                raise
            backbone = make(tuple(inner.input_size[1:]))
    elif not isinstance(backbone, nn.Module):
        raise TypeError(f'backbone must be a timm model name or nn.Module, got {type(backbone).__name__}')
    else:
        # the caller's network stays as it was, and still runs; without timm's contract, cut before its head
        given = backbone = adapt_classifier(copy.deepcopy(backbone))
        make = lambda il_size: given  # noqa: E731
    if num_classes is not None and num_classes != backbone.num_classes:
        backbone.reset_classifier(num_classes)
    grid = getattr(getattr(backbone, 'patch_embed', None), 'img_size', None)
    image = getattr(backbone, 'pretrained_cfg', {}).get('input_size', (3, 224, 224))[1:]
    sizes = il_sizes(image, grid, reduction)
    try:
        fitted, size, layout, readers = probe_backbone(make, sizes, in_chans, model_name(backbone))
    except ShrinkError:
        raise
    except Exception as e:  # building it for another grid failed: a clear error, not the constructor's
        raise ShrinkError(f'{model_name(backbone)} cannot be built for IL ({share_in_words(reduction)} the image): '
                          f'{type(e).__name__}: {e}') from e
    # IL sizes it did not run at: an image of r times one is refused by name at the forward
    return fitted, size, layout, readers, [list(s) for s in sizes[:sizes.index(size)]]
