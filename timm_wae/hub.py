"""Weights in and out: the Hugging Face Hub layout (config.json + model.safetensors + README.md).

timm's ``save_for_hf`` and the Hub client do the work; this module adds what they lack for a
plugin: reconstruction args for ``WAEWrapper`` models, a model card, a strict and explained
weight check (never a silent partial load), and errors that say what to do when the Hub is out
of reach.
"""
import json
import pickle
import socket
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Union
from urllib.parse import urlsplit

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import save_for_hf
from torch import nn

from .wrapper import WAEWrapper, upgrade_state_dict

__all__ = ['WeightsError', 'HubUnavailableError', 'save_pretrained', 'push_to_hub', 'push_model',
           'load_weights', 'check_state_dict', 'timm_filter', 'create_model', 'translate_hub_errors', 'model_card_text']

WEIGHTS_NAME = 'model.safetensors'


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the model."""


class HubUnavailableError(OSError):
    """The Hub could not be reached and no cached copy exists."""


def _source(cfg: Mapping[str, Any]) -> str:
    return str(cfg.get('file') or cfg.get('hf_hub_id') or cfg.get('url') or 'the checkpoint')


def _classifier_keys(cfg: Mapping[str, Any]) -> set:
    names = cfg.get('classifier') or ()
    names = (names,) if isinstance(names, str) else names
    return {f'{n}.{p}' for n in names for p in ('weight', 'bias')}


def check_state_dict(
        state_dict: Mapping[str, torch.Tensor],
        model: nn.Module,
        source: Optional[str] = None,
        adapting: bool = False,
) -> Mapping:
    """Raise WeightsError unless every key and shape matches. With ``adapting`` (timm's
    ``pretrained_filter_fn``) the classifiers are exempt when the model's class count differs
    from the pretrained cfg's, because timm then drops them to fine-tune."""
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    source = source or _source(cfg)
    arch = cfg.get('architecture', type(model).__name__)
    if isinstance(model, WAEWrapper):  # files saved before the front end's rename load too
        state_dict = upgrade_state_dict(dict(state_dict), model=model)
    expected = model.state_dict()
    new_classes = getattr(model, 'num_classes', None) != cfg.get('num_classes')
    skip = _classifier_keys(cfg) if adapting and new_classes else set()
    missing = sorted(set(expected) - set(state_dict) - skip)
    unexpected = sorted(set(state_dict) - set(expected))
    shared = sorted(set(expected) & set(state_dict) - skip)
    shapes = [f'{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}'
              for k in shared if state_dict[k].shape != expected[k].shape]
    integers = [f'{k}: file {state_dict[k].dtype} vs model {expected[k].dtype}' for k in shared
                if expected[k].is_floating_point() and not state_dict[k].is_floating_point()]
    if integers:  # load_state_dict would cast int8 codes to float without their scales: a silently wrong model
        raise WeightsError(
            f'weights {source} hold {len(integers)} integer tensors where {arch} has floats ({"; ".join(integers[:3])}): '
            f'quantized (INT8) weights cannot load into a float model. Load the float checkpoint, and run an INT8 '
            f'export with timm_wae.export.OnnxRuntimeModel.')
    if missing or unexpected or shapes:
        classes = [s for s in shapes if any(s.startswith(c) for c in _classifier_keys(cfg))]
        hint = (' The class count differs: pass num_classes to match the file.' if classes else '')
        parts = [f'{len(missing)} missing (e.g. {missing[:3]})' if missing else '',
                 f'{len(unexpected)} unexpected (e.g. {unexpected[:3]})' if unexpected else '',
                 f'{len(shapes)} with another shape ({"; ".join(shapes[:3])})' if shapes else '']
        raise WeightsError(
            f'weights {source} do not fit {arch}: ' + ', '.join(p for p in parts if p) +
            f'. Is it a checkpoint of another architecture?{hint}')
    return state_dict


def timm_filter(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> Mapping:
    """timm's ``pretrained_filter_fn``: check before timm loads, and never drop heads silently.

    timm re-initialises the classifiers whenever ``num_classes`` differs from the pretrained cfg's,
    even when the file's heads already have the requested classes (a 10-class file loaded with
    ``num_classes=10`` through a 1000-class tag). When the file's heads fit the model, the cfg (the
    same dict timm's loader reads next) takes the model's class count, so everything loads strictly;
    when they do not, timm's fine-tuning semantics apply and a warning names the fresh heads.
    """
    cfg = getattr(model, 'pretrained_cfg', None)
    if cfg is not None and getattr(model, 'num_classes', None) != cfg.get('num_classes'):
        expected = model.state_dict()
        heads = sorted(k for k in _classifier_keys(cfg) if k in expected)
        if heads and all(k in state_dict and state_dict[k].shape == expected[k].shape for k in heads):
            cfg['num_classes'] = model.num_classes
        elif heads:
            file_classes = state_dict[heads[0]].shape[0] if heads[0] in state_dict else 'unknown'
            warnings.warn(
                f'{_source(cfg)}: the classifier(s) {sorted({k.rsplit(".", 1)[0] for k in heads})} are freshly '
                f'initialised for {model.num_classes} classes (the file has {file_classes}): timm\'s fine-tuning '
                f'semantics. To load every weight, pass num_classes={file_classes}.', stacklevel=2)
    return check_state_dict(state_dict, model, adapting=True)


def _onnx_refusal(path: Path) -> str:
    return (f'{str(path)!r} is an ONNX file (an exported or INT8-quantized model), not PyTorch weights: run it with '
            f'timm_wae.export.OnnxRuntimeModel({str(path)!r}, threads), or load the float model it came from')


def _read_weights(path: Path) -> Dict[str, torch.Tensor]:
    """safetensors, or a legacy .pth/.bin through torch.load(weights_only=True); never plain pickle."""
    if not path.is_file():
        raise FileNotFoundError(f'weights file {str(path)!r} does not exist')
    if path.suffix == '.onnx':
        raise WeightsError(_onnx_refusal(path))
    try:
        if path.suffix == '.safetensors':
            return load_file(str(path))
        state = torch.load(str(path), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:  # torch's message advises weights_only=False: never for us
        if 'Unsupported global' in str(e):  # the weights-only unpickler refused a Python object
            raise WeightsError(
                f'weights file {str(path)!r} holds pickled Python objects, which timm_wae never unpickles; '
                f'save its state_dict as safetensors (safetensors.torch.save_file) and load that') from None
        raise WeightsError(f'cannot read weights file {str(path)!r}: not a safetensors file or a torch '
                           f'checkpoint (truncated or corrupt?)') from None
    except Exception as e:  # any other parser failure (text files give IndexError, KeyError, ...)
        raise WeightsError(f'cannot read weights file {str(path)!r}: not a safetensors file or a torch checkpoint '
                           f'(truncated or corrupt?): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}') from None
    for key in ('state_dict', 'model'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f'weights file {str(path)!r} does not hold a state_dict of tensors')
    return state


def check_weights_file(path: Union[str, Path]) -> None:
    """A local weights file given to timm's loader (``pretrained_cfg_overlay=dict(file=...)``), read once here:
    a missing file, an ONNX file or one that is not a checkpoint is a WeightsError naming it and what it is,
    not an error from deep inside torch.load."""
    path = Path(path)
    if not path.is_file():
        what = 'a folder, not a weights file' if path.is_dir() else 'does not exist'
        raise WeightsError(f'weights file {str(path)!r} (pretrained_cfg_overlay file=) {what}')
    _read_weights(path)


def load_weights(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load a local weights file strictly; every mismatch is an error naming the file."""
    path = Path(path)
    state = check_state_dict(_read_weights(path), model, source=str(path))
    model.load_state_dict(state, strict=True)
    return model


_REACHABLE: Dict[str, bool] = {}
_LOCAL_HINT = ("to use a local file instead: timm.create_model(name, pretrained=True, "
               "pretrained_cfg_overlay=dict(file='path/to/model.safetensors')), or "
               "timm_wae.hub.create_model('path/to/folder')")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether one TCP connection to the Hub endpoint opens within ``timeout`` s (memoised per
    endpoint): without it, the Hub client retries a dead connection for most of a minute."""
    from huggingface_hub import constants
    endpoint = constants.ENDPOINT
    if endpoint not in _REACHABLE:
        url = urlsplit(endpoint)
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == 'https' else 80)), timeout).close()
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
    if constants.HF_HUB_OFFLINE:  # nothing to read: say so before the model is built
        raise HubUnavailableError(_offline_message(what))
    raise HubUnavailableError(
        f'could not reach the Hugging Face Hub at {constants.ENDPOINT} for {what}, and no cached copy exists '
        f'(set HF_HUB_OFFLINE=1 to skip the network and use only the cache); {_LOCAL_HINT}')


def _offline_message(what: str) -> str:
    from huggingface_hub import constants
    return (f'{what} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set, '
            f'so the Hub was not asked: unset HF_HUB_OFFLINE to download it, or {_LOCAL_HINT}')


@contextmanager
def translate_hub_errors(what: str) -> Iterator[None]:
    """Turn the Hub client's and safetensors' errors into ones that say what to do."""
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    from huggingface_hub import constants
    endpoint = constants.ENDPOINT
    local_hint = _LOCAL_HINT
    try:
        yield
    except LocalEntryNotFoundError as e:  # offline, or the connection failed, and nothing cached
        if constants.HF_HUB_OFFLINE:  # nothing was tried: say so
            raise HubUnavailableError(_offline_message(what)) from e
        raise HubUnavailableError(
            f'could not reach the Hugging Face Hub at {endpoint} for {what}, and no cached copy exists (set '
            f'HF_HUB_OFFLINE=1 to skip the network and use only the cache); {local_hint}') from e
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise WeightsError(f'no weights for {what} at {endpoint} ({type(e).__name__}); they may not be '
                           f'published yet; {local_hint}') from e
    except SafetensorError as e:
        raise WeightsError(f'the downloaded weights for {what} cannot be read (truncated or corrupt?): {e}') from e


def model_card_text(model: nn.Module, card: Optional[Mapping[str, Any]] = None) -> str:
    """A Hub README: YAML metadata, architecture, data config, recipe and results (when given)."""
    card = dict(card or {})
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    arch = cfg.get('architecture', type(model).__name__)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    data_cfg = timm.data.resolve_model_data_config(model)
    backbone = getattr(model, 'backbone', None)
    lines = ['---', 'tags:', '- image-classification', '- timm', '- timm_wae', 'library_name: timm',
             f"license: {card.get('license', cfg.get('license', 'apache-2.0'))}"]
    if card.get('dataset'):
        lines += ['datasets:', f"- {card['dataset']}"]
    lines += ['---', f"# {card.get('name', arch)}", '',
              card.get('description', 'A Wavelet-like Auto-Encoder (WAE) classifier (Chen et al., AAAI 2018), '
                                      'built with timm_wae: IL into the backbone, IH into a quarter-width copy.'),
              '', '## Model details', f'- **Architecture:** {arch}']
    if backbone is not None:
        lines.append(f"- **Backbone:** {backbone.pretrained_cfg.get('architecture', type(backbone).__name__)}")
    lines += [f'- **Parameters (M):** {params:.2f}', f'- **Classes:** {getattr(model, "num_classes", "?")}',
              f"- **Data config:** input {data_cfg['input_size']}, mean {data_cfg['mean']}, std {data_cfg['std']}, "
              f"crop_pct {data_cfg['crop_pct']}, interpolation {data_cfg['interpolation']}"]
    for title, key in (('Training recipe', 'recipe'), ('Results', 'results')):
        if card.get(key):
            body = card[key]
            lines += ['', f'## {title}', body if isinstance(body, str) else json.dumps(body, indent=2)]
    lines += ['', '## Usage', '```python', 'import timm, timm_wae', f"model = timm.create_model('hf-hub:{card.get('repo_id', 'OWNER/NAME')}', pretrained=True).eval()",
              '```', '']
    return '\n'.join(lines)


def save_pretrained(
        model: nn.Module,
        folder: Union[str, Path],
        model_card: Optional[Mapping[str, Any]] = None,
        data_config: Optional[Dict[str, Any]] = None,
        pretrained_cfg: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write config.json (architecture, num_classes, model args, pretrained cfg), model.safetensors
    and a README.md model card into ``folder``, as ``push_to_hf_hub`` would upload them.

    ``pretrained_cfg`` adds entries to the saved cfg (the recipes' ``label_names``) without touching
    the model's. A ``WAEWrapper`` saved as the generic ``wae`` architecture records every model
    argument, since that name implies none; a registered name records what timm recorded.
    """
    folder = Path(folder)
    if isinstance(model, WAEWrapper) and model.front_end.reparameterized:
        raise ValueError('this model was reparameterized for inference (timm.utils.reparameterize_model: the '
                         'standardisation folded into the front end, the decoder dropped); its weights no longer fit '
                         'its architecture. Save the model before reparameterizing it, and reparameterize after loading.')
    model_args = None
    if isinstance(model, WAEWrapper) and model.pretrained_cfg.get('architecture') == 'wae':
        model_args = model.model_args
    save_for_hf(model, folder, model_config={'pretrained_cfg': dict(pretrained_cfg or {})}, model_args=model_args,
                safe_serialization=True, data_config=data_config)
    (folder / WEIGHTS_NAME).chmod(0o644)  # safetensors writes 0600; a model is meant to be shared
    (folder / 'README.md').write_text(model_card_text(model, model_card), encoding='utf-8')
    return folder


def push_to_hub(folder: Union[str, Path], repo_id: str, commit_message: str = 'Upload timm_wae model',
                private: bool = False, token: Optional[str] = None) -> str:
    """Create ``repo_id`` if needed and upload a folder made by ``save_pretrained``; returns the commit URL."""
    from huggingface_hub import HfApi
    folder = Path(folder)
    if not (folder / 'config.json').is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f'{str(folder)!r} is not a saved model folder (needs config.json and {WEIGHTS_NAME})')
    api = HfApi(token=token, library_name='timm_wae')
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), commit_message=commit_message)
    return info.commit_url


def push_model(model: nn.Module, repo_id: str, model_card: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> str:
    """save_pretrained into a temporary folder, then push_to_hub."""
    from tempfile import TemporaryDirectory
    with TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, dict(model_card or {}, repo_id=repo_id))
        return push_to_hub(tmp, repo_id, **kwargs)


def create_model(spec: str, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """A model from a registered name (``wae_resnet18.imagenette``, ``resnet50``), an ``hf-hub:``
    id, or a local folder in the Hub layout (the recipes' output)."""
    import timm_wae  # noqa: F401  (registers the wae_* models for config.json's architecture)
    path = Path(spec)
    if path.suffix == '.onnx' and path.is_file():
        raise WeightsError(_onnx_refusal(path))
    if path.is_dir():
        config_file = path / 'config.json'
        if not config_file.is_file():
            raise FileNotFoundError(f'{spec!r} is a folder without config.json; expected the Hub layout')
        try:
            config = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WeightsError(f'{config_file} is not valid JSON: {e}') from None
        if not isinstance(config, dict):
            raise WeightsError(f'{config_file} must hold a JSON object, got {type(config).__name__}')
        arch = config.get('architecture')
        if not timm.is_model(arch):
            raise WeightsError(f'{config_file} names architecture {arch!r}, which is not a registered model')
        args = dict(config.get('model_args', {}), num_classes=config.get('num_classes'))
        args.update(kwargs)
        # the architecture names its own layers (folders saved before the front end's rename name old ones)
        overlay = {k: v for k, v in (config.get('pretrained_cfg') or {}).items() if k not in ('first_conv', 'classifier')}
        model = timm.create_model(arch, pretrained=False, pretrained_cfg_overlay=overlay, **args)
        if pretrained:
            weights = path / WEIGHTS_NAME
            legacy = path / 'pytorch_model.bin'  # timm's save_for_hf default; read with weights_only
            load_weights(model, weights if weights.is_file() or not legacy.is_file() else legacy)
        return model
    name = spec.split(':', 1)[1] if spec.startswith('hf-hub:') else spec
    if not spec.startswith('hf-hub:') and not timm.is_model(name.split('.')[0]):
        raise ValueError(f"unknown model {spec!r}: not a registered timm model, an hf-hub: id or a model "
                         f"folder; try timm.list_models('wae_*')")
    with translate_hub_errors(name):
        if spec.startswith('hf-hub:'):  # timm reads config.json from the Hub before any entry point runs
            cached = before_download(name.split('@')[0], name)
            if cached is not None:
                return create_model(str(Path(cached).parent), pretrained=pretrained, **kwargs)
        elif pretrained:  # a timm name: fail at once offline, not after the Hub client's retries
            from .models._factory import _offline_overlay
            kwargs = _offline_overlay(name, kwargs)
        return timm.create_model(spec, pretrained=pretrained, **kwargs)


def create_backbone(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` for a backbone, whose weights (when asked for) come as a WAE model's do: at once
    offline with a HubUnavailableError that names HF_HUB_OFFLINE and the local-file route, a local file
    checked first."""
    if not pretrained:
        return timm.create_model(name, **kwargs)
    from .models._factory import _offline_overlay
    with translate_hub_errors(name):
        return timm.create_model(name, pretrained=True, **_offline_overlay(name, kwargs))
