"""Weights on disk: the Hub layout (config.json + model.safetensors + README.md), read and checked strictly.

timm's ``save_for_hf`` does the writing; this module adds what it lacks for a plugin: reconstruction args for
``WAEWrapper`` models, a model card, and a strict and explained weight check (never a silent partial load).
The Hub itself (downloads, push) is ``hub.py``.
"""
import json
import pickle
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import timm
import torch
from safetensors.torch import load_file
from timm.models import save_for_hf
from torch import nn

from ._compat import rename_legacy_keys, take_decoder_from_file
from .util import is_wae_model

__all__ = ['WEIGHTS_NAME', 'WeightsError', 'check_state_dict', 'check_pretrained', 'check_weights_file',
           'load_weights', 'save_pretrained', 'model_card_text', 'onnx_refusal']

WEIGHTS_NAME = 'model.safetensors'  # the weights file of a model folder; the one place it is named


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the model."""


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
    if is_wae_model(model):  # 0.1's keys renamed; a file that holds a decoder gives the model its decoder
        state_dict = rename_legacy_keys(dict(state_dict))
        take_decoder_from_file(model, state_dict)
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
            f'weights {source} hold {len(integers)} integer tensors where {arch} has floats '
            f'({"; ".join(integers[:3])}): '
            f'quantized (INT8) weights cannot load into a float model. Load the float checkpoint, and run an INT8 '
            f'export with timm_wae.export.OnnxRuntimeModel.')
    _check_finite(state_dict, expected, shared, source)
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


def _check_finite(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], keys: list,
                  source: str) -> None:
    """A NaN or Inf in the file is damage (a diverged run, a bad copy), never a model: refused naming the first
    tensor. Only where the model's own tensor is finite (a mask buffer may hold -inf by construction)."""
    for k in keys:
        v = state_dict[k]
        if v.is_floating_point() and expected[k].is_floating_point() and not torch.isfinite(v).all() \
                and torch.isfinite(expected[k]).all():
            bad = int((~torch.isfinite(v)).sum())
            raise WeightsError(f'weights {source} hold non-finite values (NaN or Inf): {k} has {bad} of {v.numel()}; '
                               f'the file is damaged or comes from a diverged run: load an earlier checkpoint')


def check_pretrained(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> Mapping:
    """timm's ``pretrained_filter_fn``: check before timm loads (``check_state_dict``), and never drop heads
    silently (``_adopt_file_classes``)."""
    _adopt_file_classes(state_dict, model)
    return check_state_dict(state_dict, model, adapting=True)


def _adopt_file_classes(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Let timm load the file's heads when they fit the model, or warn that they are fresh.

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
        # the class count of the first head the file does not fit (a bias may fit where its weight does not)
        elif heads:
            unfit = next(k for k in heads if k not in state_dict or state_dict[k].shape != expected[k].shape)
            file_classes = state_dict[unfit].shape[0] if unfit in state_dict else 'unknown'
            warnings.warn(
                f'{_source(cfg)}: the classifier(s) {sorted({k.rsplit(".", 1)[0] for k in heads})} are freshly '
                f'initialised for {model.num_classes} classes (the file has {file_classes}): timm\'s fine-tuning '
                f'semantics. To load every weight, pass num_classes={file_classes}.', stacklevel=3)


def onnx_refusal(path: Path) -> str:
    return (f'{str(path)!r} is an ONNX file (an exported or INT8-quantized model), not PyTorch weights: run it with '
            f'timm_wae.export.OnnxRuntimeModel({str(path)!r}, threads), or load the float model it came from')


def _read_weights(path: Path) -> Dict[str, torch.Tensor]:
    """safetensors, or a legacy .pth/.bin through torch.load(weights_only=True); never plain pickle."""
    if not path.is_file():
        raise FileNotFoundError(f'weights file {str(path)!r} does not exist')
    if path.suffix == '.onnx':
        raise WeightsError(onnx_refusal(path))
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
                           f'(truncated or corrupt?): {type(e).__name__}: '
                           f'{str(e).splitlines()[0] if str(e) else ""}') from None
    for key in ('state_dict', 'model'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f'weights file {str(path)!r} does not hold a state_dict of tensors')
    return state


def check_weights_file(path: Union[str, Path], folder: bool = False) -> None:
    """A local weights file given to timm's loader (``pretrained_cfg_overlay=dict(file=...)``), read once here:
    a missing file, an ONNX file or one that is not a checkpoint is a WeightsError naming it and what it is,
    not an error from deep inside torch.load. ``folder``: timm's ``local-dir:`` door, which gives the model
    folder; its weights file is read."""
    path = Path(path)
    if folder:
        legacy = path / 'pytorch_model.bin'  # what timm's folder loader reads when there is no safetensors file
        path = path / WEIGHTS_NAME if (path / WEIGHTS_NAME).is_file() or not legacy.is_file() else legacy
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
    lines += ['', '## Usage', '```python', 'import timm, timm_wae',
              f"model = timm.create_model('hf-hub:{card.get('repo_id', 'OWNER/NAME')}', pretrained=True).eval()",
              '```', '']
    return '\n'.join(lines)


def _with_true_tag(cfg: Mapping[str, Any], extra: Optional[Mapping[str, Any]], num_classes: Optional[int]) -> Dict:
    """The cfg to save, with the pretrained tag the weights were trained for: ``extra``'s ``tag`` (None: no tag),
    else the model's while its class count is the tag's (a 10-class model built from the default name is not
    ``in1k``)."""
    from .pretrained import TAGS
    cfg = dict(cfg)
    tag = (extra or {}).get('tag', cfg.get('tag'))
    if tag is None or (tag in TAGS and TAGS[tag].num_classes != num_classes):
        cfg.pop('tag', None)
    else:
        cfg['tag'] = tag
    return cfg


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
    the model's; its ``tag`` is the tag the weights were trained for (None: none). A ``WAEWrapper`` saved as
    the generic ``wae`` architecture records every model argument, since that name implies none; a registered
    name records what timm recorded.
    """
    folder = Path(folder)
    if is_wae_model(model) and model.front_end.reparameterized:
        raise ValueError('this model was reparameterized for inference (timm.utils.reparameterize_model: the '
                         'standardisation folded into the front end, the decoder dropped); its weights no longer fit '
                         'its architecture. Save the model before reparameterizing it, and reparameterize after '
                         'loading.')
    model_args = None
    if is_wae_model(model) and model.pretrained_cfg.get('architecture') == 'wae':
        model_args = model.model_args
        backbone = model_args['backbone']
        if not (timm.is_model(backbone) or backbone.startswith('torchvision:')):
            raise ValueError(f'config.json cannot record how to build the backbone {backbone!r} (a module that is '
                             f'neither a timm model nor made by a torchvision builder): save the model\'s state_dict '
                             f'(safetensors.torch.save_file) and rebuild it with WAEWrapper around your module')
    own_cfg = model.pretrained_cfg
    model.pretrained_cfg = _with_true_tag(own_cfg, pretrained_cfg, getattr(model, 'num_classes', None))
    try:
        extra = {k: v for k, v in (pretrained_cfg or {}).items() if k != 'tag'}
        save_for_hf(model, folder, model_config={'pretrained_cfg': extra}, model_args=model_args,
                    safe_serialization=True, data_config=data_config)
    finally:
        model.pretrained_cfg = own_cfg
    (folder / WEIGHTS_NAME).chmod(0o644)  # safetensors writes 0600; a model is meant to be shared
    (folder / 'README.md').write_text(model_card_text(model, model_card), encoding='utf-8')
    return folder
