"""What every floor of the package uses: the backbone errors, the words of messages, what a WAE model is.

Nothing here imports the rest of timm_wae beyond ``front_ends`` (the floor below everything).
"""
from typing import Any

from torch import nn

from .front_ends.base import FrontEnd

__all__ = ['BackboneError', 'ShrinkError', 'model_name', 'share_in_words', 'first_line', 'is_wae_model']


class BackboneError(ValueError):
    """A backbone that cannot be built into a WAE model: it does not run on IL at any size tried, its features
    cannot be joined, a layer fails in the built model, or a network cannot be cut before its head."""


class ShrinkError(BackboneError):
    """The backbone has a layer that the width rewrite (the quarter-width IH branch, the widened first conv)
    cannot divide."""


def model_name(model: nn.Module) -> str:
    """The timm architecture a module was built as, for messages (its class name where it has none)."""
    return getattr(model, 'pretrained_cfg', {}).get('architecture') or type(model).__name__


def share_in_words(reduction: int) -> str:
    """What IL's side is of the image's, in words for messages: 'half', '1/4'."""
    return 'half' if reduction == 2 else f'1/{reduction}'


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f'{type(e).__name__}: {text[0] if text else ""}'[:300]


def is_wae_model(model: Any) -> bool:
    """A WAE model: a front end, and a backbone to compare it with (bench, visualize, the recipes, the weights'
    checks); decided by what the model holds, so that the floors below ``models`` need not import it."""
    return isinstance(getattr(model, 'front_end', None), FrontEnd) and isinstance(getattr(model, 'backbone', None),
                                                                                     nn.Module)
