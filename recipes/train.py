"""Train a WAE classifier (Chen et al., AAAI 2018) or one of the paper's baselines.

    accelerate launch [accelerate options] recipes/train.py recipes/configs/NAME.yaml [key=value ...]

One config file per experiment (recipes/configs/, every field documented in recipes/README.md);
dotted ``key=value`` arguments override any field (``data.max_per_class=20 stage2.epochs=3``).
The run is up to three stages, each starting from the previous stage's saved model:

    stage 1   the WAE alone (encoder + decoder) on the transform loss  Lt = lr + λ·le
    stage 2   the classifier on  Lc = CE(sL) + CE(sc), the WAE frozen (``train_front_end`` trains
              the encoder too, on Lc only: the Decomposition+CNN baseline)
    stage 3   everything on  Lc + γ·Lt, small learning rate

Read top to bottom: configuration, data, model and losses, checkpoints and metrics, evaluation,
one stage's training loop, main. Every stage checkpoints (atomically) at each epoch end and every
``checkpoint_every`` steps; ``resume=true`` continues a killed run exactly where its last
checkpoint was (data order and augmentation are a function of (seed, epoch), not of the process).
"""
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Tuple, Union, get_args, get_origin, get_type_hints

import numpy as np
import timm
import timm.data
import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast, set_seed
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.datasets.folder import find_classes
from tqdm.auto import tqdm

from timm_wae import TransformLoss, WAEWrapper
from timm_wae.front_ends import front_end_class
from timm_wae.distill import DistillationLoss, Teacher, load_teacher
from timm_wae.evaluate import check_image_folder

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this script's own modules, however it is loaded
from train_data import (SeededBatchSampler, SeededTransform, cached_image_folder,  # noqa: E402
                        dataset_classes, image_folder, loader_throughput, tensor_transform)

REPO_ROOT = Path(__file__).resolve().parents[1]  # relative paths in configs are relative to this


# =============================================================================== configuration
@dataclass
class DataConfig:
    root: Optional[str] = '../shared/data/imagenette160'  # ImageFolder root of the two splits; None: synthetic
    train_split: str = 'train'
    val_split: str = 'val'
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
    energy_weight: float = 0.25         # stages 1, 3: λ in Lt = lr + λ·le, per-element means (the paper's λ = 1 on sums)
    train_front_end: bool = False       # stage 2: also train the WAE encoder, on Lc only
    hold_backbone_epochs: float = 0.0   # a conversion's warm-up: for this many epochs only its new parts train
                                        # (front end, IH's layers, fusion head); the trained network is held


@dataclass
class DistillConfig:
    teacher: Optional[str] = None       # model folder / name of the full-resolution teacher; None: no distillation
    weight: float = 1.0                 # loss = Lc + weight·KD in the classification stages (2 and 3)
    temperature: float = 1.0            # KD = T²·KL(teacher/T || student/T) on the final logits


@dataclass
class DebugConfig:
    nan_at_step: Optional[int] = None   # make the loss NaN at this global step of every stage (tests)
    step_delay: float = 0.0             # sleep after every step: widens the window a kill test aims at


@dataclass
class Config:
    output_dir: str = 'runs/wae'
    stages: List[int] = field(default_factory=lambda: [1, 2, 3])
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
    stage1: StageConfig = field(default_factory=lambda: StageConfig(
        epochs=4, batch_size=16, opt='adamw', lr=2e-3, sched='step', decay_epochs=3, step_on_epochs=True))
    stage2: StageConfig = field(default_factory=lambda: StageConfig(
        epochs=20, batch_size=64, lr=0.1, sched='cosine', warmup_epochs=1, warmup_lr=0.01))
    stage3: StageConfig = field(default_factory=lambda: StageConfig(
        epochs=2, batch_size=64, lr=1e-4, sched='cosine', gamma=10.0))
    distill: DistillConfig = field(default_factory=DistillConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def stage(self, n: int) -> StageConfig:
        return getattr(self, f'stage{n}')


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


def from_dict(cls: type, values: Dict[str, Any], prefix: str = '') -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f'unknown config field(s) {[prefix + k for k in unknown]}; '
                         f'{prefix or "top level"} fields are: {sorted(known)}')
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in values.items()})


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
    bad = [s for s in cfg.stages if s not in (1, 2, 3)]
    if bad or list(cfg.stages) != sorted(set(cfg.stages)):
        raise ValueError(f'stages must be an increasing subset of [1, 2, 3], got {cfg.stages}')
    if cfg.model.type not in ('wae', 'timm'):
        raise ValueError(f"model.type must be 'wae' or 'timm', got {cfg.model.type!r}")
    learns_wae = False
    if cfg.model.type == 'wae':
        try:
            learns_wae = front_end_class(cfg.model.front_end).learned
        except ValueError as e:
            raise ValueError(f'model.front_end: {e}') from None
    if cfg.model.ih_fusion not in ('branch', 'stem'):
        raise ValueError(f"unknown model.ih_fusion {cfg.model.ih_fusion!r}; expected 'branch' or 'stem'")
    if cfg.distill.weight < 0 or cfg.distill.temperature <= 0:
        raise ValueError(f'distill.weight must be >= 0 and distill.temperature > 0, got {cfg.distill.weight} '
                         f'and {cfg.distill.temperature}')
    for s in cfg.stages:
        if s in (1, 3) and not learns_wae:
            raise ValueError(f'stage {s} trains the WAE with the transform loss; model.type={cfg.model.type!r} '
                             f'front_end={cfg.model.front_end!r} has no WAE: use stages: [2]')
        if cfg.stage(s).hold_backbone_epochs and cfg.model.type != 'wae':
            raise ValueError(f'stage{s}.hold_backbone_epochs holds a WAE model\'s backbone while its new parts train; '
                             f'model.type={cfg.model.type!r} has none')
        if cfg.stage(s).hold_backbone_epochs and cfg.find_unused_parameters is False:
            cfg = replace(cfg, find_unused_parameters=True)  # DDP: the held parameters get no gradient at first
    return cfg


def resolve(path: Optional[str]) -> Optional[Path]:
    return None if path is None else (REPO_ROOT / Path(path).expanduser()).resolve()


# =============================================================================== data
def model_data_config(model: nn.Module, cfg: DataConfig) -> Dict[str, Any]:
    """timm's data config of the model at our image size (mean, std, interpolation, crop_pct)."""
    dc = timm.data.resolve_model_data_config(model)
    dc['input_size'] = (3, cfg.img_size, cfg.img_size)
    if cfg.crop_pct is not None:
        dc['crop_pct'] = cfg.crop_pct
    if cfg.interpolation is not None:
        dc['interpolation'] = cfg.interpolation
    return dc


def synthetic_image_folder(root: Path, per_class: int = 8, size: int = 40) -> Path:
    """A tiny ImageFolder (3 classes of noisy single-colour JPEGs, both splits), made once: the smoke
    config runs from a fresh clone without any data set."""
    from PIL import Image
    if (root / 'done').is_file():
        return root
    rng = np.random.default_rng(0)
    for split, n in (('train', per_class), ('val', max(per_class // 2, 1))):
        for c, colour in enumerate([(220, 40, 40), (40, 200, 40), (40, 40, 220)]):
            folder = root / split / f'class{c}'
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f'{i}.jpg', quality=90)
    (root / 'done').write_text('')
    return root


def check_paths(cfg: Config) -> None:
    """Every path the config names exists (the data splits have class folders with images): one
    clear error before anything is built. ``timm-wae train`` calls it before launching."""
    if cfg.data.root is not None:
        for split in (cfg.data.train_split, cfg.data.val_split):
            check_image_folder(resolve(cfg.data.root) / split)
    if cfg.init_from is not None and not resolve(cfg.init_from).exists():
        raise FileNotFoundError(f'init_from={cfg.init_from!r} does not exist')
    spec = cfg.model.backbone_from  # a path, or a model name / hf-hub: id to load
    if spec is not None and not resolve(spec).exists() and not (
            spec.startswith('hf-hub:') or timm.is_model(spec.split('.')[0])):
        raise FileNotFoundError(f'model.backbone_from={spec!r} does not exist, and is not a timm model name '
                                f'(resnet50.a1_in1k) or an hf-hub: id')


def data_root(cfg: Config) -> Path:
    """The checked data root; None in the config makes the synthetic set under output_dir."""
    check_paths(cfg)
    if cfg.data.root is None:
        return synthetic_image_folder(resolve(cfg.output_dir) / 'synthetic_data')
    return resolve(cfg.data.root)


def build_datasets(cfg: DataConfig, root: Path, dc: Dict[str, Any], accelerator: Accelerator,
                   train_size: Optional[int] = None):
    """(train dataset keyed by (index, seed), val dataset, class names). ``train_size``: the training crops'
    size when it is not the model's (a teacher's larger size; the student's step resizes them down)."""
    train_size = train_size or cfg.img_size

    val_max = cfg.val_max_per_class if cfg.val_max_per_class is not None else cfg.max_per_class
    aug = dict(scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip, color_jitter=cfg.color_jitter,
               interpolation=dc['interpolation'], mean=dc['mean'], std=dc['std'])
    if cfg.cache:
        size = cfg.cache_size or math.floor(cfg.img_size / dc['crop_pct'])
        cache = dict(size=size, cache_dir=resolve(cfg.cache_dir), interpolation=dc['interpolation'],
                     workers=cfg.workers)
        with accelerator.main_process_first():  # the main process decodes, the others then read
            train = cached_image_folder(root / cfg.train_split, max_per_class=cfg.max_per_class, **dict(
                cache, size=cfg.cache_size or math.floor(train_size / dc['crop_pct'])))
            val = cached_image_folder(root / cfg.val_split, max_per_class=val_max, **cache,
                                      transform=tensor_transform(cfg.img_size, False, crop_pct=dc['crop_pct'], **{
                                          k: aug[k] for k in ('interpolation', 'mean', 'std')}))
        train_tf = tensor_transform(train_size, True, **aug)
    else:
        train = image_folder(root / cfg.train_split, max_per_class=cfg.max_per_class)
        val = image_folder(root / cfg.val_split, max_per_class=val_max,
                           transform=timm.data.create_transform(**dc, is_training=False))
        train_tf = timm.data.create_transform((3, train_size, train_size), is_training=True, **aug)
    if dataset_classes(train) != dataset_classes(val):
        raise ValueError(f'train and val splits of {root} have different classes')
    return SeededTransform(train, train_tf), val, dataset_classes(train)


def train_loader(dataset, batch_size: int, cfg: Config, accelerator: Accelerator) -> DataLoader:
    sampler = SeededBatchSampler(len(dataset), batch_size, seed=cfg.seed, rank=accelerator.process_index,
                                 world_size=accelerator.num_processes)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.workers,
                      persistent_workers=cfg.data.workers > 0, pin_memory=accelerator.device.type == 'cuda',
                      generator=torch.Generator().manual_seed(cfg.seed))  # keeps the global RNG untouched


# =============================================================================== model and losses
def load_network(spec: str, arch: Optional[str], num_classes: Optional[int], what: str) -> nn.Module:
    """A trained network with its weights: a model folder, a registered name (with its pretrained tag),
    an hf-hub: id, or a .safetensors file of ``arch``; checked against ``arch`` and the classes (None:
    any)."""
    from timm_wae.hub import create_model, load_weights
    local = resolve(spec)
    if local.suffix == '.safetensors':
        if arch is None:
            raise ValueError(f'{what}={spec!r} is a weights file: name its architecture (model.backbone)')
        if not local.is_file():
            raise FileNotFoundError(f'{what}={spec!r} does not exist')
        model = timm.create_model(arch, **({} if num_classes is None else dict(num_classes=num_classes)))
        model = load_weights(model, local)
    else:
        model = create_model(str(local) if local.exists() else spec, pretrained=True)
    found = model.pretrained_cfg.get('architecture')
    if (arch is not None and found != arch) or num_classes not in (None, model.num_classes):
        raise ValueError(f'{what}={spec!r} is a {found!r} with {model.num_classes} classes; '
                         f'this run needs a {arch or found!r} with {num_classes}')
    return model


def build_model(cfg: ModelConfig, num_classes: int, with_decoder: bool = False) -> nn.Module:
    """The run's model; with ``backbone_from``, the trained network converted (it starts where it was).
    ``with_decoder``: a learned front end gets its decoder (the run trains it with the transform loss)."""
    if cfg.type == 'timm':  # the full-resolution baseline: the backbone itself
        return timm.create_model(cfg.backbone, pretrained=cfg.pretrained_backbone, num_classes=num_classes,
                                 drop_rate=cfg.drop_rate)
    args = dict(num_classes=num_classes, front_end=cfg.front_end, use_ih=cfg.use_ih, ih_fusion=cfg.ih_fusion,
                width_divisor=cfg.width_divisor, drop_rate=cfg.drop_rate, wae_width=cfg.wae_width,
                with_decoder=with_decoder)
    if cfg.backbone_from:
        network = load_network(cfg.backbone_from, cfg.backbone, num_classes, 'model.backbone_from')
        return WAEWrapper.from_trained(network, **args)
    return WAEWrapper(cfg.backbone, pretrained_backbone=cfg.pretrained_backbone, **args)


def set_trainable(model: nn.Module, stage: int, sc: StageConfig) -> bool:
    """requires_grad for the stage; returns True when the WAE is frozen (kept in eval mode)."""
    wae = model.front_end if isinstance(model, WAEWrapper) and model.front_end.learned else None
    model.requires_grad_(stage != 1)
    if stage == 1:
        wae.requires_grad_(True)
    elif stage == 2 and wae is not None:
        if not sc.train_front_end:
            wae.requires_grad_(False)
            return True
        if wae.can_reconstruct:
            wae.decoder.requires_grad_(False)  # Decomposition+CNN: encoder on Lc only, no decoder
    return False


class Objective(nn.Module):
    """One stage's loss as a module: DDP must see the forward that uses the trained parameters."""

    def __init__(self, model: nn.Module, stage: int, sc: StageConfig, transform_loss: TransformLoss,
                 frozen_wae: bool = False, teacher: Optional[Teacher] = None, distill: Optional[DistillConfig] = None,
                 fixed_low_norm: bool = False, input_size: Optional[Tuple[int, int]] = None,
                 interpolation: str = 'bilinear'):
        super().__init__()
        self.model, self.stage, self.gamma, self.frozen_wae = model, stage, sc.gamma, frozen_wae
        # the model's image size: crops made at a larger teacher's size are resized down for the student,
        # so every student of a comparison learns from the teacher's view of the full image
        self.input_size, self.interpolation = input_size, 'bicubic' if interpolation == 'bicubic' else 'bilinear'
        self.fixed_low_norm = fixed_low_norm
        self.transform_loss = transform_loss
        # distillation: classification stages only. Held outside the module tree (a tuple): checkpoints
        # then carry no copy of the teacher, which loads from its own file on resume
        self._teacher = (teacher,) if stage in (2, 3) and teacher is not None else ()
        self.distill_weight = distill.weight if distill else 0.
        self.kd = DistillationLoss(distill.temperature if distill else 1.)

    def _distill(self, out: Dict[str, Tensor], x: Tensor) -> Dict[str, Tensor]:
        """Add weight·KD(final logits, the teacher's) to the loss."""
        if not self._teacher:
            return out
        kd = self.kd(out['logits'], self._teacher[0](x))
        return dict(out, loss=out['loss'] + self.distill_weight * kd, kd=kd)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_wae:
            self.model.front_end.encoder.eval()  # the frozen part; its output's standardisation keeps learning
        if self.fixed_low_norm:
            self.model.front_end.norm_low.eval()  # its starting statistics: IL stays the pooled image's scale
        return self

    def forward(self, x_full: Tensor, y: Tensor) -> Dict[str, Tensor]:
        m, x = self.model, x_full
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode=self.interpolation, antialias=True, align_corners=False)
        if self.stage == 1:  # the WAE alone, decoder included
            low, high = m.front_end(x)
            t = self.transform_loss(x, m.front_end.reconstruct(low, high, x.shape[-2:]), high)
            return {'loss': t.loss, 'lt_recon': t.recon, 'lt_energy': t.energy}
        if not isinstance(m, WAEWrapper):  # plain timm model
            logits = m(x)
            lc = F.cross_entropy(logits, y)
            return self._distill({'loss': lc, 'lc': lc, 'logits': logits}, x_full)
        out = m.forward_train(x, reconstruct=self.stage == 3)
        lc = m.classification_loss(out, y)
        if self.stage == 2:
            return self._distill({'loss': lc, 'lc': lc, 'logits': out.logits}, x_full)
        t = self.transform_loss(x, out.recon, out.high)
        return self._distill({'loss': lc + self.gamma * t.loss, 'lc': lc, 'lt': t.loss, 'lt_recon': t.recon,
                              'lt_energy': t.energy, 'logits': out.logits}, x_full)


def topk_correct(logits: Tensor, target: Tensor, k: int) -> Tensor:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == target[:, None]).any(dim=1).float()


# =============================================================================== checkpoints and metrics
@dataclass
class Progress:
    """Where a stage is; saved in every checkpoint."""
    epoch: int = 0                      # epochs completed
    batch: int = 0                      # batches completed in the current epoch
    step: int = 0                       # optimizer steps completed in the stage
    metrics_bytes: int = 0              # size of metrics.jsonl when the checkpoint was written
    meters: Dict[str, float] = field(default_factory=dict)  # this process's sums since the last train line


class MetricsLog:
    """metrics.jsonl in output_dir, written by the main process only."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self.durable = 0  # bytes that belong to finished stages

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, nbytes: int) -> None:
        """Drop lines written after the checkpoint being resumed (a killed run wrote them)."""
        if self.enabled and self.size() > nbytes:
            with self.path.open('r+b') as f:
                f.truncate(nbytes)

    def write(self, record: Dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open('a') as f:
                f.write(json.dumps(record) + '\n')


TRAINER_STATE = 'trainer_state.json'  # beside accelerate's files: progress and schedule, plain JSON


def save_checkpoint(folder: Path, accelerator: Accelerator, scheduler, progress: Progress) -> None:
    """``accelerator.save_state`` (model, optimizer, every process's RNG) into folder.tmp, plus the
    progress, the schedule and each process's partial metric sums as JSON; then swapped in with
    os.replace: a kill at any moment leaves either the previous checkpoint or the new one
    (folder.old during the swap). Nothing here is unpickled on resume beyond what
    ``torch.load(weights_only=True)`` allows."""
    tmp, old = folder.with_name(folder.name + '.tmp'), folder.with_name(folder.name + '.old')
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)  # safetensors refuses channels_last weights
    (tmp / f'meters_{accelerator.process_index}.json').write_text(json.dumps(progress.meters))
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps({
            'progress': {k: v for k, v in asdict(progress).items() if k != 'meters'},
            'scheduler': scheduler.state_dict(), 'num_processes': accelerator.num_processes}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(folder: Path, accelerator: Accelerator, scheduler) -> Optional[Progress]:
    """The checkpoint in ``folder`` (or folder.old, if a kill came during the swap), or None."""
    if (folder / 'state.pt').exists():  # not silently restarted: say what it is
        raise ValueError(f'{folder} is a checkpoint of timm_wae 0.1 (state.pt): resume it with that version '
                         f'(git checkout 162fc0a), or delete the folder to restart the stage')
    old = folder.with_name(folder.name + '.old')
    folder = folder if (folder / TRAINER_STATE).exists() else old if (old / TRAINER_STATE).exists() else None
    if folder is None:
        return None
    state = json.loads((folder / TRAINER_STATE).read_text())
    accelerator.load_state(str(folder))
    scheduler.load_state_dict(state['scheduler'])
    progress = Progress(**state['progress'])
    own = folder / f'meters_{accelerator.process_index}.json'
    if state['num_processes'] == accelerator.num_processes and own.exists():
        progress.meters = json.loads(own.read_text())
    else:
        accelerator.print(f'warning: {folder} was written by {state["num_processes"]} process(es); random '
                          f'state and partial metrics are not restored: the run will not match an uninterrupted one')
    return progress


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def save_model(model: nn.Module, folder: Path, cfg: Config, stage: int, classes: List[str],
               dc: Dict[str, Any], results: Dict[str, Any], config_name: str) -> None:
    """The stage's final model in the Hub layout (config.json, model.safetensors, README.md)."""
    from timm_wae.hub import save_pretrained
    model = model.to(memory_format=torch.contiguous_format)  # safetensors refuses channels_last weights
    data_config = {k: dc[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct')}
    tmp = folder.with_name(folder.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    card = dict(
        name=f'{config_name} (stage {stage})', dataset=Path(cfg.data.root or 'synthetic').name,
        license='other' if 'imagenette' in (cfg.data.root or '') else 'apache-2.0',
        recipe=dict(config=config_name, stage=stage, stages=cfg.stages, model=asdict(cfg.model),
                    data=asdict(cfg.data), training=asdict(cfg.stage(stage)), seed=cfg.seed),
        results=results,
    )
    save_pretrained(model, tmp, model_card=card, data_config=data_config,
                    pretrained_cfg=dict(data_config, num_classes=len(classes), label_names=list(classes)))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def load_init(model: nn.Module, path: Path) -> None:
    from timm_wae.hub import load_weights
    load_weights(model, path / 'model.safetensors' if path.is_dir() else path)


# =============================================================================== evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader, accelerator: Accelerator, classify: bool,
             transform: Optional[TransformLoss], channels_last: bool = False) -> Dict[str, float]:
    """Val metrics over the whole split (Lt's terms too with a ``transform`` loss); per-sample values
    are gathered across processes (gather_for_metrics drops the samples repeated to even out the
    last batch)."""
    if accelerator.num_processes > 1:  # BatchNorm statistics: rank 0's, as in the saved model
        for buf in model.buffers():
            broadcast(buf, from_process=0)
    model.eval()
    names = (['ce', 'top1', 'top5'] if classify else []) + (['lt', 'lt_recon', 'lt_energy'] if transform else [])
    sums, count = torch.zeros(len(names), dtype=torch.float64), 0
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        cols = []
        with accelerator.autocast():
            if classify:
                logits = model(x).float()
                cols += [F.cross_entropy(logits, y, reduction='none'), topk_correct(logits, y, 1),
                         topk_correct(logits, y, 5)]
            if transform is not None:
                low, high = model.front_end(x)
                t = transform.per_sample(x, model.front_end.reconstruct(low, high, x.shape[-2:]), high)
                cols += [t.loss, t.recon, t.energy]
        rows = accelerator.gather_for_metrics(torch.stack(cols, dim=1))
        sums += rows.double().sum(0).cpu()
        count += len(rows)
    out = {n: (s / count).item() for n, s in zip(names, sums)}
    for k in ('top1', 'top5'):
        if k in out:
            out[k] *= 100
    out['images'] = count
    return out


# =============================================================================== one stage
class NonFiniteLossError(RuntimeError):
    pass


def train_stage(stage: int, cfg: Config, accelerator: Accelerator, train_set, val_loader, classes: List[str],
                dc: Dict[str, Any], init: Optional[Path], log: MetricsLog, config_name: str,
                teacher: Optional[Teacher] = None) -> Path:
    """Train one stage (or finish it after a kill); returns the folder of its final model.

    On resume, metrics.jsonl is cut back to what the state resumed from had written: lines a
    killed run logged after its last checkpoint are written again, identically."""
    sc, main = cfg.stage(stage), accelerator.is_main_process
    stage_dir = resolve(cfg.output_dir) / f'stage{stage}'
    final, done_file, ckpt_dir = stage_dir / 'model', stage_dir / 'done.json', stage_dir / 'checkpoint'
    if cfg.resume and done_file.exists():
        accelerator.print(f'stage {stage}: already done ({final})')
        log.durable = json.loads(done_file.read_text())['metrics_bytes']
        return final
    stage_dir.mkdir(parents=True, exist_ok=True)

    set_seed(cfg.seed + stage)
    model = build_model(cfg.model, len(classes), with_decoder=any(s in (1, 3) for s in cfg.stages))
    if init is not None:
        load_init(model, init)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    frozen_wae = set_trainable(model, stage, sc)
    transform_loss = TransformLoss(sc.energy_weight)  # Lt of stages 1 and 3, in training and in val
    objective = Objective(model, stage, sc, transform_loss, frozen_wae, teacher, cfg.distill,
                          cfg.model.fixed_low_norm and isinstance(model, WAEWrapper),
                          (cfg.data.img_size, cfg.data.img_size), dc['interpolation'])

    loader = train_loader(train_set, sc.batch_size, cfg, accelerator)
    steps_per_epoch = min(loader.batch_sampler.batches_per_epoch, sc.max_steps_per_epoch or math.inf)
    optimizer = create_optimizer_v2(model, opt=sc.opt, lr=sc.lr, weight_decay=sc.weight_decay,
                                    momentum=sc.momentum)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=sc.sched, num_epochs=sc.epochs, decay_epochs=sc.decay_epochs, decay_rate=sc.decay_rate,
        min_lr=sc.min_lr, warmup_lr=sc.warmup_lr, warmup_epochs=sc.warmup_epochs,
        step_on_epochs=sc.step_on_epochs, updates_per_epoch=steps_per_epoch)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    # a conversion's warm-up: the trained network's parameters get no gradient for the first steps (its
    # BatchNorm statistics still follow IL), then everything trains
    held = [p for p in model.network_parameters() if p.requires_grad] if sc.hold_backbone_epochs else []
    hold_steps = round(sc.hold_backbone_epochs * steps_per_epoch)

    progress = None
    if cfg.resume:
        progress = load_checkpoint(ckpt_dir, accelerator, scheduler)
        if progress is not None:
            accelerator.print(f'stage {stage}: resuming at epoch {progress.epoch}, batch {progress.batch} '
                              f'(step {progress.step}) from {ckpt_dir}')
            log.truncate(progress.metrics_bytes)
    if progress is None:
        if cfg.resume:
            log.truncate(log.durable)
        progress = Progress(metrics_bytes=log.size())
    n_train = sum(p.numel() for p in params)
    accelerator.print(f'stage {stage}: {n_train / 1e6:.2f}M trainable parameters, {sc.epochs} epochs of '
                      f'{steps_per_epoch} steps, batch {sc.batch_size} on {accelerator.num_processes} process(es)')

    classify, transform = stage in (2, 3), transform_loss if stage in (1, 3) else None
    checkpoint = lambda: save_checkpoint(ckpt_dir, accelerator, scheduler, progress)  # noqa: E731

    def stop(epoch: int, error: str, what: str, remedy: str) -> NoReturn:
        """End the stage before the optimizer step: log the error, name the last good checkpoint."""
        bar.close()
        log.write({'stage': stage, 'epoch': epoch, 'step': progress.step, 'error': error})
        last_good = ckpt_dir if (ckpt_dir / TRAINER_STATE).exists() else \
            f'none in this stage yet (it starts from {init or "scratch"})'
        raise NonFiniteLossError(
            f'stage {stage}: {what}; stopped before updating the weights. Last good checkpoint: {last_good}. '
            f'Lower stage{stage}.lr (now {sc.lr}), {remedy}, then run again with resume=true.')

    val = {}
    for epoch in range(progress.epoch, sc.epochs):
        loader.batch_sampler.set_epoch(epoch, progress.batch)
        scheduler.step(epoch)
        objective.train()
        bar = tqdm(total=steps_per_epoch, initial=progress.batch, disable=not main, dynamic_ncols=True,
                   desc=f'stage {stage} epoch {epoch + 1}/{sc.epochs}')
        tick = time.perf_counter()
        data_time = 0.
        for x, y in loader:
            if progress.batch >= steps_per_epoch:
                break
            x, y = x.to(accelerator.device, non_blocking=True), y.to(accelerator.device, non_blocking=True)
            if cfg.model.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            data_time += time.perf_counter() - tick
            scheduler.step_update(progress.step)
            if held and held[0].requires_grad == (progress.step < hold_steps):
                for p in held:
                    p.requires_grad_(progress.step >= hold_steps)
            out = objective(x, y)
            if cfg.debug.nan_at_step == progress.step:
                out['loss'] = out['loss'] * float('nan')
            loss = accelerator.reduce(out['loss'].detach().float(), 'mean').item()
            if not math.isfinite(loss):
                stop(epoch, f'non-finite loss {loss}',
                     f'the loss is {loss} at step {progress.step} (epoch {epoch}, batch {progress.batch})',
                     f'or set stage{stage}.clip_grad')
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(out['loss'])
            grad_norm = float(accelerator.clip_grad_norm_(params, sc.clip_grad or math.inf))  # all-reduced grads
            if not math.isfinite(grad_norm) and accelerator.mixed_precision != 'fp16':  # fp16: the scaler skips
                stop(epoch, 'non-finite gradient',
                     f'the loss is finite ({loss:.4g}) but the gradient norm is {grad_norm} at step {progress.step}',
                     f'set stage{stage}.clip_grad or use fp32')
            optimizer.step()

            # metric sums since the last line; reduced across processes when a line is written
            n = len(y)
            m = progress.meters
            for k, v in out.items():
                if k != 'logits':
                    m[k] = m.get(k, 0.) + v.item() * n
            if 'logits' in out:
                m['top1'] = m.get('top1', 0.) + topk_correct(out['logits'], y, 1).sum().item()
                m['top5'] = m.get('top5', 0.) + topk_correct(out['logits'], y, 5).sum().item()
            m['grad_norm'] = m.get('grad_norm', 0.) + (grad_norm * n if math.isfinite(grad_norm) else 0.)
            m['n'] = m.get('n', 0.) + n
            m['time'] = m.get('time', 0.) + time.perf_counter() - tick
            m['data_time'] = m.get('data_time', 0.) + data_time
            progress.step += 1
            progress.batch += 1
            bar.update(1)
            bar.set_postfix(loss=f'{loss:.4g}', lr=f'{optimizer.param_groups[0]["lr"]:.3g}', refresh=False)

            if progress.step % cfg.log_every == 0 or progress.batch == steps_per_epoch:
                keys = sorted(m)
                tot = accelerator.reduce(torch.tensor([m[k] for k in keys], dtype=torch.float64,
                                                      device=accelerator.device), 'sum').tolist()
                tot = dict(zip(keys, tot))
                wall = tot['time'] / accelerator.num_processes
                rec = {'stage': stage, 'split': 'train', 'epoch': epoch, 'step': progress.step,
                       **{k: tot[k] / tot['n'] for k in keys if k not in ('n', 'time', 'data_time')},
                       'lr': optimizer.param_groups[0]['lr'], 'img_per_s': tot['n'] / wall,
                       'data_frac': tot['data_time'] / tot['time']}
                for k in ('top1', 'top5'):
                    if k in rec:
                        rec[k] *= 100
                log.write(rec)
                bar.set_postfix({k: f'{rec[k]:.4g}' for k in ('loss', 'lc', 'lt', 'top1', 'top5', 'lr', 'img_per_s')
                                 if k in rec}, refresh=True)
                progress.meters = {}
            if cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0 \
                    and progress.batch < steps_per_epoch:
                progress.metrics_bytes = log.size()
                checkpoint()
            if cfg.debug.step_delay:
                time.sleep(cfg.debug.step_delay)
            tick, data_time = time.perf_counter(), 0.
        bar.close()

        progress.epoch, progress.batch = epoch + 1, 0
        val = evaluate(model, val_loader, accelerator, classify, transform, cfg.model.channels_last)
        log.write({'stage': stage, 'split': 'val', 'epoch': epoch, 'step': progress.step, **val})
        accelerator.print(f'stage {stage} epoch {epoch + 1}/{sc.epochs} val: ' +
                          ', '.join(f'{k} {v:.4g}' for k, v in val.items()))
        bad = [k for k, v in val.items() if not math.isfinite(v)]
        if bad or not all(torch.isfinite(p).all() for p in model.parameters()):
            raise NonFiniteLossError(f'stage {stage}: non-finite weights or val metrics {bad} after epoch {epoch}; '
                                     f'the checkpoint of the previous epoch is kept')
        progress.metrics_bytes = log.size()
        checkpoint()

    if not val:  # resumed after the last epoch's checkpoint: its val line is logged already
        val = evaluate(model, val_loader, accelerator, classify, transform, cfg.model.channels_last)
    if main:
        save_model(model, final, cfg, stage, classes, dc, val, config_name)
        write_json_atomic(done_file, {'model': str(final), 'val': val, 'metrics_bytes': log.size()})
    accelerator.wait_for_everyone()
    log.durable = log.size()
    accelerator.free_memory()
    return final


# =============================================================================== main
def main(argv: List[str]) -> int:
    if not argv or argv[0].startswith('-'):
        print(__doc__, file=sys.stderr)
        return 2
    cfg = load_config(argv[0], argv[1:])
    config_name = Path(argv[0]).stem
    accelerator = Accelerator(kwargs_handlers=[
        DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)])
    try:
        return run(cfg, config_name, accelerator)
    finally:  # every mode and every exit: tear the process group down before the interpreter does
        accelerator.end_training()


def run(cfg: Config, config_name: str, accelerator: Accelerator) -> int:
    if cfg.model.backbone_from and cfg.model.backbone is None:  # the architecture of the network to convert
        network = load_network(cfg.model.backbone_from, None, None, 'model.backbone_from')
        cfg = replace(cfg, model=replace(cfg.model, backbone=network.pretrained_cfg['architecture']))
    out_dir = resolve(cfg.output_dir)
    log = MetricsLog(out_dir / 'metrics.jsonl', accelerator.is_main_process)
    if log.size() and not cfg.resume and cfg.mode == 'train':  # every process sees the file: all stop
        raise SystemExit(f'{out_dir} already has a run (metrics.jsonl); pass resume=true to continue it '
                         f'or choose another output_dir')
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / 'config.yaml').write_text(yaml.safe_dump(json.loads(json.dumps(asdict(cfg))), sort_keys=False))
    accelerator.wait_for_everyone()

    # the data pipeline follows the model's timm data config (mean, std, interpolation, crop)
    probe = build_model(replace(cfg.model, backbone_from=None), cfg.model.num_classes or 2)  # no weights needed
    dc = model_data_config(probe, cfg.data)
    del probe
    with accelerator.main_process_first():  # the main process makes the synthetic set, if any
        root = data_root(cfg)
    teacher = None
    if cfg.distill.teacher is not None and cfg.mode == 'train':  # load and check it before any training
        num_classes = len(find_classes(root / cfg.data.train_split)[0])
        if cfg.distill.teacher.endswith('.safetensors'):
            # a weights file of the backbone's architecture (a converted network's own file), seeing the full image
            network = load_network(cfg.distill.teacher, cfg.model.backbone, num_classes, 'distill.teacher')
            teacher = Teacher(network, (cfg.data.img_size, cfg.data.img_size)).to(accelerator.device)
        else:
            local = resolve(cfg.distill.teacher)
            spec = str(local) if local.exists() else cfg.distill.teacher  # a folder, else a model name
            teacher = load_teacher(spec, num_classes).to(accelerator.device)
        accelerator.print(f'distillation: teacher {cfg.distill.teacher} at {teacher.input_size} px, '
                          f'weight {cfg.distill.weight}, temperature {cfg.distill.temperature}')
    # a lower-resolution student trains on crops at its teacher's size, resized down in the step
    train_size = max(cfg.data.img_size, *teacher.input_size) if teacher is not None else None
    train_set, val_set, classes = build_datasets(cfg.data, root, dc, accelerator, train_size)
    if cfg.model.num_classes not in (None, len(classes)):
        raise ValueError(f'model.num_classes={cfg.model.num_classes} but {root} has {len(classes)} classes')
    accelerator.print(f'data: {len(train_set)} train / {len(val_set)} val images, {len(classes)} classes, '
                      f'{cfg.data.img_size} px, cache={"on" if cfg.data.cache else "off"}')
    val_loader = accelerator.prepare(DataLoader(val_set, batch_size=cfg.data.eval_batch_size,
                                                num_workers=cfg.data.workers))

    if cfg.mode == 'loader':  # the loader alone, to compare with the training step's images/s
        stage = cfg.stages[0] if cfg.stages else 2
        loader = train_loader(train_set, cfg.stage(stage).batch_size, cfg, accelerator)
        stats = loader_throughput(loader, cfg.loader_batches)
        stats = {'mode': 'loader', 'cache': cfg.data.cache, 'workers': cfg.data.workers,
                 'batch_size': cfg.stage(stage).batch_size, **stats}
        log.write(stats)
        accelerator.print(json.dumps(stats))
        accelerator.wait_for_everyone()
        return 0
    if cfg.mode == 'eval':
        if cfg.init_from is None:
            raise ValueError('mode=eval needs init_from (a model folder)')
        model = build_model(cfg.model, len(classes))
        load_init(model, resolve(cfg.init_from))
        model = model.to(accelerator.device)
        learned = isinstance(model, WAEWrapper) and model.front_end.learned and model.front_end.can_reconstruct
        transform = TransformLoss(cfg.stage3.energy_weight) if learned else None  # Lt as stage 3 weighs it
        val = evaluate(model, val_loader, accelerator, True, transform)
        log.write({'mode': 'eval', 'split': 'val', 'init_from': cfg.init_from,
                   'num_processes': accelerator.num_processes, **val})
        accelerator.print(json.dumps(val))
        accelerator.wait_for_everyone()
        return 0

    if cfg.model.backbone_from is not None:  # the network to convert fits the data, before any stage starts
        load_network(cfg.model.backbone_from, cfg.model.backbone, len(classes), 'model.backbone_from')
    init = resolve(cfg.init_from)
    for stage in cfg.stages:
        try:
            init = train_stage(stage, cfg, accelerator, train_set, val_loader, classes, dc, init, log, config_name,
                               teacher)
        except NonFiniteLossError as e:
            if accelerator.is_main_process:
                print(f'error: {e}', file=sys.stderr)
            return 3
    if cfg.push_to_hub and accelerator.is_main_process:
        from timm_wae.hub import push_to_hub
        url = push_to_hub(init, cfg.push_to_hub, commit_message=f'{config_name}: stages {cfg.stages}')
        accelerator.print(f'pushed {init} to {cfg.push_to_hub}: {url}')
    accelerator.wait_for_everyone()
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main(sys.argv[1:]))
    except (ValueError, FileNotFoundError) as e:  # configuration and data problems: one line, no traceback
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
