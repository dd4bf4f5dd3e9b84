"""Downloads from the Hugging Face Hub that fail at once with what to do when the Hub is out of reach, and the
Hub client's and safetensors' errors translated into ones that say what to do.

Weights on disk (the folder layout, the strict checks) are ``weights.py``; uploads are ``hub.py``.
"""
import socket
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Mapping, Optional
from urllib.parse import urlsplit

from safetensors import SafetensorError
from timm.models._builder import resolve_pretrained_cfg  # the builder's own cfg resolution

from .weights import WEIGHTS_NAME, WeightsError, check_weights_file

__all__ = ['HubUnavailableError', 'hub_reachable', 'before_download', 'translate_hub_errors', 'offline_overlay',
           'tagged_name']


class HubUnavailableError(OSError):
    """The Hub could not be reached and no cached copy exists."""


_REACHABLE: Dict[str, bool] = {}
_LOCAL_HINT = ("to use a local file instead: timm.create_model(name, pretrained=True, "
               "pretrained_cfg_overlay=dict(file='path/to/model.safetensors')), or "
               "timm_wae.load_model('path/to/folder')")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether one TCP connection to the Hub endpoint opens within ``timeout`` s (memoised per
    endpoint): without it, the Hub client retries a dead connection for most of a minute."""
    from huggingface_hub import constants
    endpoint = constants.ENDPOINT
    if endpoint not in _REACHABLE:
        url = urlsplit(endpoint)
        try:
            port = url.port or (443 if url.scheme == 'https' else 80)
            socket.create_connection((url.hostname, port), timeout).close()
            _REACHABLE[endpoint] = True
        except OSError:
            _REACHABLE[endpoint] = False
    return _REACHABLE[endpoint]


def before_download(repo_id: str, what: str) -> Optional[str]:
    """Call before a Hub download: None when the client may go ahead (the Hub answers, or
    HF_HUB_OFFLINE makes it read its cache at once); the cached weights file when the Hub does not
    answer; otherwise a HubUnavailableError at once instead of after the client's retries."""
    from huggingface_hub import constants, try_to_load_from_cache
    if not constants.HF_HUB_OFFLINE and hub_reachable():
        return None
    for filename in (WEIGHTS_NAME, 'pytorch_model.bin', 'open_clip_pytorch_model.bin'):
        cached = try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str):
            return None if constants.HF_HUB_OFFLINE else cached
    raise HubUnavailableError(_offline_message(what) if constants.HF_HUB_OFFLINE else _unreachable_message(what))


def _offline_message(what: str) -> str:
    from huggingface_hub import constants
    return (f'{what} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set, '
            f'so the Hub was not asked whether weights are published for it: unset HF_HUB_OFFLINE to download '
            f'them, or {_LOCAL_HINT}')


def _unreachable_message(what: str) -> str:
    from huggingface_hub import constants
    return (f'could not reach the Hugging Face Hub at {constants.ENDPOINT} for {what}, so whether weights are '
            f'published for it is unknown, and no cached copy exists (set HF_HUB_OFFLINE=1 to skip the network and '
            f'use only the cache); {_LOCAL_HINT}')


@contextmanager
def translate_hub_errors(what: str) -> Iterator[None]:
    """Turn the Hub client's and safetensors' errors into ones that say what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    endpoint = constants.ENDPOINT
    local_hint = _LOCAL_HINT
    try:
        yield
    except LocalEntryNotFoundError as e:  # offline, or the connection failed, and nothing cached
        if constants.HF_HUB_OFFLINE:  # nothing was tried: say so
            raise HubUnavailableError(_offline_message(what)) from e
        raise HubUnavailableError(_unreachable_message(what)) from e
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:  # the Hub answered
        raise WeightsError(f'no weights for {what} at {endpoint} ({type(e).__name__}): the Hub answered that none '
                           f'are published under this name; {local_hint}') from e
    except SafetensorError as e:
        raise WeightsError(f'the downloaded weights for {what} cannot be read (truncated or corrupt?): {e}') from e


def offline_overlay(variant: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Weights that come from the Hub: fail at once when it does not answer and nothing is cached,
    or load the cached file without the Hub client's retries."""
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                 pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay')).to_dict()
    if cfg.get('source') == 'local-dir':  # timm's local-dir: door gives the folder
        check_weights_file(cfg['file'], folder=True)
        return kwargs
    if cfg.get('file'):  # the local-file route: a file timm's loader would misread is named here
        check_weights_file(cfg['file'])
        return kwargs
    if not cfg.get('hf_hub_id'):
        return kwargs
    cached = before_download(cfg['hf_hub_id'], tagged_name(variant, kwargs))
    if cached is None:
        return kwargs
    return dict(kwargs, pretrained_cfg_overlay=dict(kwargs.get('pretrained_cfg_overlay') or {}, file=cached))


def tagged_name(variant: str, kwargs: Mapping[str, Any]) -> str:
    """The name with its pretrained tag (``wae_resnet18.imagenette``), as the user asked for it."""
    if '.' in variant:
        return variant
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'))
    return f'{variant}.{cfg.tag}' if getattr(cfg, 'tag', None) else variant
