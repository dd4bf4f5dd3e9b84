"""The training configuration: the schema as dataclasses, YAML files with a ``base``, ``key=value`` overrides,
and the checks that name the field at fault before anything is built (``timm-wae train`` runs them before it
launches). Every field is documented in recipes/README.md.
"""
import os
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union, get_args, get_origin, get_type_hints

import timm
import yaml

from ..evaluate import check_image_folder
from ..front_ends import front_end_class
from ..models.cfg import IH_FUSIONS
from . import REPO_ROOT, resolve

__all__ = ['Stage', 'STAGES', 'Config', 'DataConfig', 'STREAM_PREFIXES', 'check_dataset', 'ModelConfig', 'StageConfig',
           'DistillConfig', 'DebugConfig', 'load_config', 'read_yaml', 'from_dict', 'check_paths', 'check_output_dir',
           'resolve', 'REPO_ROOT']


@dataclass
class DataConfig:
    root: Optional[str] = '../shared/data/imagenette160'  # ImageFolder root of the two splits; None: synthetic
    dataset: Optional[str] = None       # a timm dataset name (wds/NAME, hfds/NAME, hfids/NAME, tfds/NAME, torch/NAME)
                                        # read by timm.data.create_dataset from root; None: the ImageFolder route
    train_split: Optional[str] = None   # None: 'train'
    val_split: Optional[str] = None     # None: 'val' for folders, 'validation' for a timm dataset (timm's default)
    num_samples: Optional[int] = None   # a stream's images per epoch; None: the split's size from the dataset
    repeats: float = 0.0                # timm's epoch repeats for the readers that use it (tfds, hfids)
    img_size: int = 128                 # training crop and eval crop (the WAE's input; IL is half)
    crop_pct: Optional[float] = None    # eval: resize to img_size / crop_pct, centre crop; None: model's
    interpolation: Optional[str] = None  # None: the model's data config (bicubic for resnets)
    scale: Tuple[float, float] = (0.35, 1.0)   # random-resized-crop area range
    ratio: Tuple[float, float] = (0.75, 1.3333333)
    hflip: float = 0.5
    color_jitter: float = 0.0
    max_per_class: Optional[int] = None       # first N train images per class (quick runs)
    val_max_per_class: Optional[int] = None   # None: same as max_per_class
    cache: bool = True                  # decode once to uint8 arrays on disk, augment uint8 tensors
    cache_dir: Optional[str] = None     # None: $TIMM_WAE_CACHE or ~/.cache/timm_wae/decoded
    cache_size: Optional[int] = None    # cached image side; None: floor(img_size / crop_pct)
    workers: int = 0                    # DataLoader worker processes per training process
    eval_batch_size: int = 128          # per process

    def splits(self) -> Tuple[str, str]:
        """(train, val) split names: folders default to train/val, timm's datasets to train/validation."""
        return self.train_split or 'train', self.val_split or ('validation' if self.dataset else 'val')


@dataclass
class ModelConfig:
    type: str = 'wae'                   # 'wae': WAEWrapper; 'timm': the plain backbone (full resolution)
    backbone: Optional[str] = 'resnet18'  # None: the architecture of backbone_from
    front_end: str = 'wae'              # 'wae', 'wae2' (learned), 'dwt97', 'haar' (Wavelet+CNN), 'resize' (IR)
    use_ih: bool = True                 # False: no IH branch or fusion head (IL only, IR)
    ih_fusion: str = 'branch'           # 'branch' (quarter-width copy, the paper) or 'stem' (backbone's input)
    num_classes: Optional[int] = None   # None: the number of class folders
    pretrained_backbone: bool = False
    backbone_from: Optional[str] = None  # a trained network to convert: a model folder, a timm name with its
                                         # pretrained tag (resnet50.a1_in1k), an hf-hub: id, or a .safetensors file
                                         # of `backbone`; the model starts where it was (WAEWrapper.from_trained)
    fixed_low_norm: bool = False        # IL's standardisation keeps its starting statistics (IL = the pooled
                                        # image of a converted network) instead of following each batch
    wae_width: int = 16
    width_divisor: int = 4
    drop_rate: float = 0.0
    channels_last: bool = False


@dataclass
class StageConfig:
    epochs: int = 1
    batch_size: int = 64                # global: split over the processes
    opt: str = 'sgd'                    # any timm.optim.create_optimizer_v2 name
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    sched: str = 'cosine'               # any timm.scheduler.create_scheduler_v2 name
    step_on_epochs: bool = False        # False: the schedule moves every update
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    decay_epochs: float = 10.0          # 'step' schedule: multiply by decay_rate every decay_epochs
    decay_rate: float = 0.1
    clip_grad: Optional[float] = None   # max gradient norm
    max_steps_per_epoch: Optional[int] = None  # cut each epoch short (stage 1 on a budget)
    gamma: float = 0.0                  # stage 3: weight of Lt in Lc + γ·Lt
    energy_weight: float = 0.25         # stages 1, 3: λ in Lt = lr + λ·le, per-element means (the paper's λ = 1
                                        # on sums)
    train_front_end: bool = False       # stage 2: also train the WAE encoder, on Lc only
    loss: str = 'ce'                    # classification loss: 'ce' (softmax cross-entropy) or 'bce' (timm's
                                        # BinaryCrossEntropy, one sigmoid per class: ResNet strikes back)
    smoothing: float = 0.0              # label smoothing (applied by mixup when it is on)
    bce_target_thresh: Optional[float] = None  # bce: mixed targets at or above it become 1 (RSB: 0.2)
    mixup: float = 0.0                  # mixup alpha (timm.data.Mixup); 0: off
    cutmix: float = 0.0                 # cutmix alpha; with mixup too, each batch gets one of the two
    hold_backbone_epochs: float = 0.0   # a conversion's warm-up: for this many epochs only its new parts train
                                        # (front end, IH's layers, fusion head); the trained network is held
    new_parts_lr_scale: float = 1.0     # a conversion: the lr of the parts that start at zero (the stem's IH
                                        # channels, an IH branch, the fusion head) is lr times this
    front_end_lr_scale: float = 1.0     # a conversion: the lr of the front end (it starts as the exact Haar split)
    recalibrate_bn: int = 0             # a fresh start from trained weights: re-estimate BatchNorm statistics on
                                        # this many training images at the new input first (FixRes), no gradient


@dataclass
class DistillConfig:
    teacher: Optional[str] = None       # model folder / name of the full-resolution teacher; None: no distillation
    weight: float = 1.0                 # loss = Lc + weight·KD in the classification stages (2 and 3)
    temperature: float = 1.0            # KD = T²·KL(teacher/T || student/T) on the final logits


@dataclass
class DebugConfig:
    nan_at_step: Optional[int] = None   # make the loss NaN at this global step of every stage (tests)
    step_delay: float = 0.0             # sleep after every step: widens the window a kill test aims at


@dataclass(frozen=True)
class Stage:
    """What one stage trains and on which losses; each starts from the previous stage's saved model."""
    trains: str         # 'front_end' (the WAE, decoder included), 'classifier' (all but the WAE), 'all'
    classify: bool      # Lc = CE(sL) + CE(sc), and distillation when configured
    transform: bool     # Lt = lr + λ·le through the decoder (needs a learned front end)
    defaults: StageConfig = field(default_factory=StageConfig)  # its config before the YAML's `stageN:`


# A run's stages, in order. A new stage is a row here (what it trains, its losses, its default config); a YAML
# file configures it as `stageN:` and runs it with `stages: [..., N]`.
STAGES: Dict[int, Stage] = {
    1: Stage('front_end', classify=False, transform=True, defaults=StageConfig(  # Lt
        epochs=4, batch_size=16, opt='adamw', lr=2e-3, sched='step', decay_epochs=3, step_on_epochs=True)),
    2: Stage('classifier', classify=True, transform=False, defaults=StageConfig(  # Lc; the WAE frozen unless
        epochs=20, batch_size=64, lr=0.1, sched='cosine', warmup_epochs=1, warmup_lr=0.01)),  # train_front_end
    3: Stage('all', classify=True, transform=True, defaults=StageConfig(  # Lc + γ·Lt
        epochs=2, batch_size=64, lr=1e-4, sched='cosine', gamma=10.0)),
}


@dataclass
class Config:
    output_dir: str = 'runs/wae'
    stages: List[int] = field(default_factory=lambda: list(STAGES))
    mode: str = 'train'                 # 'train', 'eval' (init_from on the val split), 'loader' (time the loader)
    init_from: Optional[str] = None     # Hub-layout folder (or .safetensors) the first stage starts from
    resume: bool = False
    seed: int = 0
    log_every: int = 20                 # steps between train metric lines
    checkpoint_every: int = 0           # steps between mid-epoch checkpoints (0: epoch ends only)
    loader_batches: int = 50            # mode=loader: batches to time
    find_unused_parameters: bool = False
    push_to_hub: Optional[str] = None   # 'owner/name': push the last stage's model
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    # each stage's config: `stageN:` in YAML and overrides (stage2.lr=0.01), cfg.stage(N) or cfg.stageN here
    stage_cfgs: Dict[int, StageConfig] = field(
        default_factory=lambda: {n: replace(s.defaults) for n, s in STAGES.items()})

    def stage(self, n: int) -> StageConfig:
        return self.stage_cfgs[n]

    def __getattr__(self, name: str) -> StageConfig:
        """``cfg.stage2``: a stage's config by the name YAML gives it."""
        if name.startswith('stage') and name[5:].isdigit() and int(name[5:]) in STAGES:
            return self.stage(int(name[5:]))
        raise AttributeError(f'{type(self).__name__!r} object has no attribute {name!r}')

    def to_dict(self) -> Dict[str, Any]:
        """The values as a YAML file states them (``stageN:`` for each stage), as config.yaml records them."""
        values = asdict(self)
        stage_cfgs = values.pop('stage_cfgs')
        return {**values, **{f'stage{n}': v for n, v in stage_cfgs.items()}}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Turn YAML values into the field's type (YAML reads 1e-4 as a string, lists for tuples)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), where)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f'{where} must be a mapping, got {value!r}')
        return from_dict(tp, value, where + '.')
    if origin in (list, tuple):
        value = value if isinstance(value, (list, tuple)) else [value]
        return origin(_coerce(v, args[0], where) for v in value)
    try:
        if tp is bool:
            if isinstance(value, str) and value.lower() in ('true', 'false'):
                return value.lower() == 'true'
            if not isinstance(value, bool):
                raise ValueError
            return value
        if tp in (int, float):
            if isinstance(value, bool) or (tp is int and isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return tp(float(value)) if tp is int else tp(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f'{where} must be {getattr(tp, "__name__", tp)}, got {value!r}') from None
    return value


def from_dict(cls: type, values: Dict[str, Any], prefix: str = '', base: Any = None) -> Any:
    """A ``cls`` of ``values`` (typed and checked, named by ``prefix``), over ``base`` when given."""
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)} - ({'stage_cfgs'} if cls is Config else set())
    if cls is Config:  # `stageN:` sections configure the stages of the table
        stage_values = {k: values[k] for k in values if k.startswith('stage') and k[5:].isdigit()}
        values = {k: v for k, v in values.items() if k not in stage_values}
        known_stages = [f'stage{n}' for n in STAGES]
        unknown = sorted(set(stage_values) - set(known_stages))
        if unknown:
            raise ValueError(f'unknown config section(s) {unknown}; the stages are {known_stages} '
                             f'(timm_wae.training.config.STAGES)')
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f'unknown config field(s) {[prefix + k for k in unknown]}; '
                         f'{prefix or "top level"} fields are: {sorted(known)}')
    coerced = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    if cls is Config:
        coerced['stage_cfgs'] = {n: _coerce_stage(n, stage_values.get(f'stage{n}', {})) for n in STAGES}
    return replace(base, **coerced) if base is not None else cls(**coerced)


def _coerce_stage(n: int, values: Any) -> StageConfig:
    if not isinstance(values, dict):
        raise ValueError(f'stage{n} must be a mapping, got {values!r}')
    return from_dict(StageConfig, values, f'stage{n}.', base=STAGES[n].defaults)


def read_yaml(path: Union[str, Path], seen: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """A config file's values; ``base: other.yaml`` (beside it) supplies every field it does not set,
    so an experiment's file states only how it differs."""
    path = Path(path).resolve()
    if path in seen:
        raise ValueError(f'{path.name}: base configs form a cycle ({" -> ".join(p.name for p in seen + (path,))})')
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f'{path.name} must hold a mapping of config fields, got {type(values).__name__}')
    base = values.pop('base', None)
    if base is None:
        return values
    if not (path.parent / base).is_file():
        raise FileNotFoundError(f'{path.name}: base config {base!r} does not exist in {path.parent}')
    return _merge(read_yaml(path.parent / base, seen + (path,)), values)


def _merge(base: Dict[str, Any], diff: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in diff.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: Union[str, Path], overrides: List[str]) -> Config:
    """The YAML file (over its base), then ``key=value`` overrides (values parsed as YAML), as a
    checked Config."""
    values = read_yaml(path)
    for item in overrides:
        key, sep, raw = item.partition('=')
        if not sep or not key:
            raise ValueError(f'expected key=value, got {item!r}')
        node = values
        *parents, leaf = key.split('.')
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f'{key}: {p} is not a section')
        node[leaf] = yaml.safe_load(raw)
    if 'energy_weight' in (values.get('model') or {}):
        raise ValueError('model.energy_weight is now stage1.energy_weight / stage3.energy_weight: λ is a loss weight, '
                         'next to γ')
    cfg = from_dict(Config, values)
    if cfg.mode not in ('train', 'eval', 'loader'):
        raise ValueError(f"mode must be 'train', 'eval' or 'loader', got {cfg.mode!r}")
    bad = [s for s in cfg.stages if s not in STAGES]
    if bad or list(cfg.stages) != sorted(set(cfg.stages)):
        raise ValueError(f'stages must be an increasing subset of {list(STAGES)}, got {cfg.stages}')
    if cfg.model.type not in ('wae', 'timm'):
        raise ValueError(f"model.type must be 'wae' or 'timm', got {cfg.model.type!r}")
    learns_wae = False
    if cfg.model.type == 'wae':
        try:
            learns_wae = front_end_class(cfg.model.front_end).learned
        except ValueError as e:
            raise ValueError(f'model.front_end: {e}') from None
    if cfg.model.ih_fusion not in IH_FUSIONS:
        raise ValueError(f"unknown model.ih_fusion {cfg.model.ih_fusion!r}; expected 'branch' or 'stem'")
    check_dataset(cfg)
    if cfg.distill.weight < 0 or cfg.distill.temperature <= 0:
        raise ValueError(f'distill.weight must be >= 0 and distill.temperature > 0, got {cfg.distill.weight} '
                         f'and {cfg.distill.temperature}')
    _check_sizes(cfg)
    for s in cfg.stages:
        if cfg.stage(s).loss not in ('ce', 'bce'):
            raise ValueError(f"stage{s}.loss must be 'ce' or 'bce', got {cfg.stage(s).loss!r}")
        if STAGES[s].transform and not learns_wae:
            raise ValueError(f'stage {s} trains the WAE with the transform loss; model.type={cfg.model.type!r} '
                             f'front_end={cfg.model.front_end!r} has no WAE: use stages: [2]')
        if cfg.stage(s).hold_backbone_epochs and cfg.model.type != 'wae':
            raise ValueError(f'stage{s}.hold_backbone_epochs holds a WAE model\'s backbone while its new parts train; '
                             f'model.type={cfg.model.type!r} has none')
        sgd = cfg.stage(s).opt in ('sgd', 'momentum', 'nesterov')
        for field_name in ('new_parts_lr_scale', 'front_end_lr_scale'):
            scale = getattr(cfg.stage(s), field_name)
            if scale != 1 and not (scale > 0 and cfg.model.backbone_from and sgd):
                raise ValueError(f'stage{s}.{field_name}={scale} scales the lr of a converted model\'s new parts: '
                                 f'it needs model.backbone_from, a positive scale and an SGD optimizer (stage{s}.opt='
                                 f'{cfg.stage(s).opt!r})')
        if cfg.stage(s).hold_backbone_epochs and cfg.find_unused_parameters is False:
            cfg = replace(cfg, find_unused_parameters=True)  # DDP: the held parameters get no gradient at first
    return cfg


STREAM_PREFIXES = ('wds', 'hfds', 'hfids', 'tfds', 'torch')  # timm.data.create_dataset's named datasets


def check_dataset(cfg: Config) -> None:
    """A timm dataset name has a known prefix and a class count (``model.num_classes``)."""
    name = cfg.data.dataset
    if not name:
        return
    if name.partition('/')[0].lower() not in STREAM_PREFIXES or '/' not in name:
        raise ValueError(f'data.dataset={name!r}: expected one of timm\'s dataset names '
                         f'({", ".join(p + "/NAME" for p in STREAM_PREFIXES)}); leave it empty for an ImageFolder')
    if cfg.model.num_classes is None:
        raise ValueError(f'data.dataset={name!r} has no class folders to count: set model.num_classes')


def _check_sizes(cfg: Config) -> None:
    """Counts and sizes that no run can use (a batch of 0 images, a log line every 0 steps), named by field."""
    least = {'log_every': 1, 'checkpoint_every': 0, 'loader_batches': 1, 'data.img_size': 1,
             'data.eval_batch_size': 1, 'data.workers': 0, 'data.max_per_class': 1, 'data.val_max_per_class': 1,
             **{f'stage{s}.{k}': m for s in cfg.stages for k, m in (('batch_size', 1), ('epochs', 0),
                                                                       ('max_steps_per_epoch', 1))}}
    for name, minimum in least.items():
        value = cfg
        for part in name.split('.'):
            value = getattr(value, part)
        if value is not None and value < minimum:
            raise ValueError(f'{name} must be >= {minimum}, got {value}')


def check_output_dir(output_dir: str) -> None:
    """output_dir is, or can become, a folder this process can write: one line naming the field otherwise."""
    path = resolve(output_dir)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f'output_dir={output_dir!r}: {existing} is a file, not a folder')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f'output_dir={output_dir!r}: {existing} is not writable')


def check_paths(cfg: Config) -> None:
    """Every path the config names exists (the data splits have class folders with images): one
    clear error before anything is built. ``timm-wae train`` calls it before launching."""
    check_output_dir(cfg.output_dir)
    if cfg.data.dataset:
        root = cfg.data.root
        if root is not None and '://' not in root and not resolve(root).exists():
            raise FileNotFoundError(f'data.root={root!r} (of data.dataset={cfg.data.dataset!r}) does not exist')
    elif cfg.data.root is not None:
        for split in cfg.data.splits():
            check_image_folder(resolve(cfg.data.root) / split)
    if cfg.init_from is not None and not resolve(cfg.init_from).exists():
        raise FileNotFoundError(f'init_from={cfg.init_from!r} does not exist')
    spec = cfg.model.backbone_from  # a path, or a model name / hf-hub: id to load
    if spec is not None and not resolve(spec).exists() and not (
            spec.startswith(('hf-hub:', 'torchvision:')) or timm.is_model(spec.split('.')[0])):
        raise FileNotFoundError(f'model.backbone_from={spec!r} does not exist, and is not a timm model name '
                                f'(resnet50.a1_in1k), a torchvision one (torchvision:resnet50.IMAGENET1K_V2) or an '
                                f'hf-hub: id')
