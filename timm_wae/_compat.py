"""What files saved by earlier versions need to load, and nothing else. 0.1's front end was the attribute
``wae`` with the IL/IH standardisation beside it (keys renamed as they load), and it saved λ, a loss weight, as
a model arg (dropped). Before 0.3 every learned front end had a decoder: a file that holds one gives the model
its decoder as it loads, so that nothing in the file is dropped."""
from typing import Any, Dict

from torch import Tensor, nn

__all__ = ['rename_legacy_keys', 'drop_legacy_args', 'take_decoder_from_file', 'load_hook']

LEGACY_PREFIXES = {'wae.': 'front_end.', 'norm_low.': 'front_end.norm_low.', 'norm_high.': 'front_end.norm_high.'}


def rename_legacy_keys(state_dict: Dict[str, Tensor], prefix: str = '') -> Dict[str, Tensor]:
    """Rename a WAE model's 0.1 keys (under ``prefix``) in place; returns the same dict."""
    for old, new in LEGACY_PREFIXES.items():
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
    return state_dict


def drop_legacy_args(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """A 0.1 config.json's model args without ``energy_weight``; returns the same dict."""
    kwargs.pop('energy_weight', None)
    return kwargs


def take_decoder_from_file(model: nn.Module, state_dict: Dict[str, Tensor], prefix: str = '') -> None:
    """Attach the decoder of a WAE model whose ``state_dict`` (under ``prefix``) holds one."""
    fe = model.front_end
    if fe.learned and not fe.can_reconstruct and not fe.reparameterized and \
            any(k.startswith(prefix + 'front_end.decoder.') for k in state_dict):
        fe.attach_decoder()


def load_hook(module: nn.Module, state_dict: Dict[str, Tensor], prefix: str, *args: Any) -> None:
    """A WAE model's load_state_dict pre-hook: both of the above."""
    take_decoder_from_file(module, rename_legacy_keys(state_dict, prefix), prefix)
