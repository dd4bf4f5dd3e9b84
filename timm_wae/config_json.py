"""What a model folder's or Hub repository's config.json may say, checked before anything is built.

A config.json comes from whoever made the folder: its ``model_args`` and ``pretrained_cfg`` go into
``timm.create_model``, where ``checkpoint_path``, ``pretrained_backbone`` or a ``file`` would make the loader open
another file or download one. So the fields are an allow-list (what ``save_pretrained`` writes), anything that
names a file or a download is refused wherever it is nested, and a malformed field is a WeightsError naming
config.json and the field, not a TypeError from inside a constructor.
"""
from dataclasses import fields
from fnmatch import fnmatch
from numbers import Real
from typing import Any, Callable, Dict, Mapping, Optional

from timm.models import PretrainedCfg

from .pretrained import FAMILIES
from .weights import WeightsError

__all__ = ['check_config', 'check_model_args', 'source_config_name', 'FILE_FIELDS']

# fields that make a loader read a file or download one, refused at any depth (backbone_kwargs included)
FILE_FIELDS = frozenset({'checkpoint_path', 'pretrained', 'pretrained_backbone', 'pretrained_cfg',
                         'pretrained_cfg_overlay', 'pretrained_path', 'file', 'url', 'hf_hub_id', 'hf_hub_filename',
                         'state_dict', 'cache_dir'})
TOP_LEVEL = ('architecture', 'num_classes', 'num_features', 'global_pool', 'model_args', 'pretrained_cfg',
             'label_names', 'label_descriptions')  # what timm's save_for_hf writes
# the pretrained cfg's fields, less where weights come from ('source' is timm's, set as it reads the file)
CFG_FIELDS = frozenset(f.name for f in fields(PretrainedCfg)) - FILE_FIELDS - {'source'}


def _count(minimum: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _size(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 3 and all(_count(1)(s) for s in v)


def _numbers(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, Real) and not isinstance(x, bool) for x in v)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_is = lambda *types: lambda v: isinstance(v, types)  # noqa: E731
_rate = lambda v: isinstance(v, Real) and not isinstance(v, bool) and 0 <= v < 1  # noqa: E731

# a WAE model's model args (WAEWrapper's, and the released VGG layout's head_hidden): what each must be
WAE_ARGS: Dict[str, tuple] = {
    'backbone': (lambda v: isinstance(v, str) and (':' not in v or (v.startswith('torchvision:') and '.' not in v)),
                 'a timm model name or torchvision:NAME (not an hf-hub: or local-dir: id, no weights tag)'),
    'num_classes': (_count(0), 'an integer >= 0'),
    'in_chans': (_count(1), 'an integer >= 1'),
    'front_end': (_is(str), 'a front end name'),
    'use_ih': (_is(bool), 'true or false'),
    'ih_fusion': (lambda v: v in ('branch', 'stem'), "'branch' or 'stem'"),
    'width_divisor': (_count(1), 'an integer >= 1'),
    'standardize': (_is(bool), 'true or false'),
    'fusion_hidden': (_optional(_count(1)), 'an integer >= 1 or null'),
    'head_hidden': (_count(1), 'an integer >= 1'),
    'drop_rate': (_rate, 'a number in [0, 1)'),
    'wae_width': (_count(1), 'an integer >= 1'),
    'backbone_kwargs': (_is(dict), 'a mapping'),
    'global_pool': (_is(str), 'a pooling name'),
    'with_decoder': (_is(bool), 'true or false'),
    'energy_weight': (lambda v: True, ''),  # 0.1's loss weight, dropped as it loads
}
CFG_CHECKS: Dict[str, tuple] = {
    'num_classes': (_count(0), 'an integer >= 0'),
    'input_size': (_size, 'three integers >= 1 [C, H, W]'),
    'test_input_size': (_optional(_size), 'three integers >= 1 [C, H, W]'),
    'min_input_size': (_optional(_size), 'three integers >= 1 [C, H, W]'),
    'crop_pct': (lambda v: isinstance(v, Real) and not isinstance(v, bool) and v > 0, 'a number > 0'),
    'mean': (_numbers, 'a list of numbers'),
    'std': (_numbers, 'a list of numbers'),
    'label_names': (_optional(_is(list, tuple, dict)), 'a list of names'),
}


def _refuse(where: str, field: str, what: str) -> WeightsError:
    return WeightsError(f'{where}: field {field!r} {what}')


def _no_file_fields(value: Any, where: str, path: str) -> None:
    """Refuse any field that names a file or a download, at any depth of ``value``."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k in FILE_FIELDS:
                raise _refuse(where, f'{path}.{k}', 'names a file or a download, which a model folder may not do '
                                                    '(the folder\'s own weights are the only ones loaded)')
            _no_file_fields(v, where, f'{path}.{k}')
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _no_file_fields(v, where, f'{path}[{i}]')


def _check_fields(values: Mapping[str, Any], checks: Mapping[str, tuple], where: str, path: str) -> None:
    for k, v in values.items():
        if k in checks and not checks[k][0](v):
            raise _refuse(where, f'{path}.{k}', f'must be {checks[k][1]}, got {v!r}')


def check_model_args(args: Any, arch: str, where: str) -> None:
    """``model_args`` of a config.json (``where`` names it): a mapping; a WAE model's hold only its known
    arguments; nothing names a file or a download."""
    if not isinstance(args, dict):
        raise _refuse(where, 'model_args', f'must be a mapping of argument names to values, got {args!r}')
    _no_file_fields(args, where, 'model_args')
    if arch == 'wae' or any(fnmatch(arch, family) for family in FAMILIES):
        unknown = sorted(set(args) - set(WAE_ARGS))
        if unknown:
            raise _refuse(where, f'model_args.{unknown[0]}', f'is not an argument of {arch}; its arguments are '
                                                             f'{sorted(k for k in WAE_ARGS if k != "energy_weight")}')
        _check_fields(args, WAE_ARGS, where, 'model_args')


def check_config(config: Any, where: str) -> Dict[str, Any]:
    """The parsed config.json (``where`` names the file), checked; returned as it is."""
    import timm
    if not isinstance(config, dict):
        raise WeightsError(f'{where} must hold a JSON object, got {type(config).__name__}')
    unknown = sorted(set(config) - set(TOP_LEVEL))
    if unknown:
        raise _refuse(where, unknown[0], f'is not a field of a model config; they are {list(TOP_LEVEL)}')
    arch = config.get('architecture')
    if not isinstance(arch, str):
        raise _refuse(where, 'architecture', f'must name a registered model, got {arch!r}')
    if not timm.is_model(arch):
        raise WeightsError(f'{where} names architecture {arch!r}, which is not a registered model')
    if 'num_classes' in config and not _count(0)(config['num_classes']):
        raise _refuse(where, 'num_classes', f'must be an integer >= 0, got {config["num_classes"]!r}')
    check_model_args(config.get('model_args', {}), arch, where)
    cfg = config.get('pretrained_cfg', {})
    if not isinstance(cfg, dict):
        raise _refuse(where, 'pretrained_cfg', f'must be a mapping, got {cfg!r}')
    _no_file_fields({k: v for k, v in cfg.items() if v not in (None, '') and not k.startswith('label_')}, where,
                    'pretrained_cfg')
    unknown = sorted(set(cfg) - CFG_FIELDS - FILE_FIELDS)
    if unknown:
        raise _refuse(where, f'pretrained_cfg.{unknown[0]}', 'is not a field of timm\'s pretrained cfg')
    _check_fields(cfg, CFG_CHECKS, where, 'pretrained_cfg')
    return config


def source_config_name(cfg: Optional[Mapping[str, Any]]) -> str:
    """The config.json that timm's ``local-dir:`` or ``hf-hub:`` door read, for messages."""
    cfg = cfg or {}
    if cfg.get('source') == 'local-dir':
        return f"{cfg.get('file')}/config.json"
    return f"hf-hub:{cfg.get('hf_hub_id')} config.json"
