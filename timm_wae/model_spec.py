"""What a user may name as a model, resolved in one place for the Python API and the ``timm-wae`` commands.

A spec is a registered timm name with an optional pretrained tag (``wae_resnet18.imagenette``, ``resnet50``),
an ``hf-hub:owner/name`` id, or a local folder in the Hub layout (config.json + model.safetensors, the recipes'
output; ``local-dir:PATH`` names one explicitly). ONNX files and bare weights files are refused with what to do.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
from torch import nn

from .config_json import check_config
from .download import before_download, offline_overlay, translate_hub_errors
from .surgery.adapter import TORCHVISION_PREFIX, create_torchvision
from .weights import WEIGHTS_NAME, WeightsError, load_weights, onnx_refusal

__all__ = ['ModelSpec', 'ModelSpecError', 'is_repo_id', 'resolve_spec', 'load_model']


class ModelSpecError(ValueError):
    """A spec that names no model: an unknown name or tag, a missing folder, a file that is not a model."""


@dataclass(frozen=True)
class ModelSpec:
    kind: str   # 'folder', 'hub' or 'name'
    name: str   # the folder's path, the Hub id (without 'hf-hub:') or the timm name with its tag


def is_repo_id(text: str) -> bool:
    """A Hub repository id: ``owner/name``."""
    return text.count('/') == 1 and all(text.split('/'))


def resolve_spec(spec: str) -> ModelSpec:
    """What ``spec`` names, checked without building anything (an ONNX file is a WeightsError)."""
    if spec.startswith('hf-hub:'):
        repo = spec[len('hf-hub:'):]
        if not is_repo_id(repo.split('@')[0]):
            raise ModelSpecError(f'invalid Hub id {spec!r}; expected hf-hub:owner/name')
        return ModelSpec('hub', repo)
    if spec.startswith('local-dir:'):
        spec = spec[len('local-dir:'):]
        if not Path(spec).is_dir():
            raise ModelSpecError(f'model folder {spec!r} does not exist')
    path = Path(spec)
    if path.is_dir():
        if not (path / 'config.json').is_file():
            raise ModelSpecError(f'model folder {spec!r} has no config.json (expected the Hub layout: config.json + '
                                 f'{WEIGHTS_NAME})')
        return ModelSpec('folder', spec)
    if path.is_file() and path.suffix == '.onnx':
        raise WeightsError(onnx_refusal(path))
    if path.is_file():
        raise ModelSpecError(f'{spec!r} is a file, not a model: give a model name and load the file into it '
                             f'(--checkpoint {spec} on the command line), or a model folder (config.json + '
                             f'{WEIGHTS_NAME})')
    if not timm.is_model(spec):
        if os.sep in spec or spec.startswith('.') or (os.altsep and os.altsep in spec):
            raise ModelSpecError(f'model folder {spec!r} does not exist')
        import difflib
        close = difflib.get_close_matches(spec, timm.list_models(), n=3, cutoff=0.75)
        hint = f' (did you mean {", ".join(close)}?)' if close else ''
        raise ModelSpecError(f"unknown model {spec!r}; try `timm.list_models('wae_*')`{hint}, an hf-hub:owner/name "
                             f"id or a model folder")
    if '.' in spec:
        try:
            timm.models.get_pretrained_cfg(spec)
        except RuntimeError:
            arch, tag = spec.split('.', 1)
            raise ModelSpecError(f"unknown pretrained tag {tag!r} of model {arch!r}; try "
                                 f"`timm.list_pretrained('{arch}*')`") from None
    return ModelSpec('name', spec)


def _load_folder(path: Path, pretrained: bool, **kwargs: Any) -> nn.Module:
    config_file = path / 'config.json'
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f'{config_file} is not valid JSON: {e}') from None
    check_config(config, str(config_file))
    arch = config['architecture']
    args = dict(config.get('model_args', {}), num_classes=config.get('num_classes'))
    args.update(kwargs)
    # the architecture names its own layers (the saved cfg's names are what the code named them then)
    overlay = {k: v for k, v in (config.get('pretrained_cfg') or {}).items() if k not in ('first_conv', 'classifier')}
    try:
        model = timm.create_model(arch, pretrained=False, pretrained_cfg_overlay=overlay, **args)
    except TypeError as e:  # another architecture's argument the checks cannot know (a plain timm model's)
        raise WeightsError(f'{config_file}: its model_args do not fit {arch}: {e}') from None
    if pretrained:
        weights = path / WEIGHTS_NAME
        legacy = path / 'pytorch_model.bin'  # timm's save_for_hf default; read with weights_only
        load_weights(model, weights if weights.is_file() or not legacy.is_file() else legacy)
    return model


def load_model(spec: str, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """The model ``spec`` names, with its weights unless ``pretrained=False`` (a folder's file, the Hub's, or
    timm's for a tagged name); ``kwargs`` go to ``timm.create_model``. Offline, a Hub download fails at once."""
    if spec.startswith(TORCHVISION_PREFIX):  # torchvision:resnet50.IMAGENET1K_V2, adapted to timm's contract
        return create_torchvision(spec, pretrained, **kwargs)
    resolved = resolve_spec(spec)
    if resolved.kind == 'folder':
        return _load_folder(Path(resolved.name), pretrained, **kwargs)
    with translate_hub_errors(resolved.name):
        if resolved.kind == 'hub':  # timm reads config.json from the Hub before any entry point runs
            cached = before_download(resolved.name.split('@')[0], resolved.name)
            if cached is not None:
                return _load_folder(Path(cached).parent, pretrained, **kwargs)
        elif pretrained:  # a timm name: fail at once offline, not after the Hub client's retries
            kwargs = offline_overlay(resolved.name, kwargs)
        return timm.create_model(spec, pretrained=pretrained, **kwargs)
