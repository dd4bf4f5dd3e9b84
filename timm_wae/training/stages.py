"""The objective: what each stage trains and on which losses (the table, ``config.STAGES``), the model a run
trains, and the loss module that ``accelerator.prepare`` wraps (DDP must see the forward that uses every
trained parameter)."""
from functools import partial
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import timm
import timm.data
import timm.loss
import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from torch import Tensor, nn

from ..distill import DistillationLoss, Teacher, load_teacher
from ..front_ends import TransformLoss
from ..model_spec import load_model
from ..models import WAEWrapper
from ..models.wae import is_wae_model
from ..surgery.adapter import TORCHVISION_PREFIX, create_torchvision
from ..weights import load_weights
from . import resolve
from .config import STAGES, Config, DistillConfig, ModelConfig, Stage, StageConfig

__all__ = ['Stage', 'STAGES', 'load_network', 'build_model', 'build_teacher', 'set_trainable', 'criterion',
           'batch_mixer', 'Objective', 'recalibrate_batchnorm', 'param_groups']


WEIGHTS_FILES = ('.safetensors', '.pth', '.pt')  # a bare state_dict (torch.load with weights_only=True)


def load_network(spec: str, arch: Optional[str], num_classes: Optional[int], what: str) -> nn.Module:
    """A trained network with its weights: a model folder, a registered name (with its pretrained tag),
    ``torchvision:NAME.WEIGHTS``, an hf-hub: id, or a state_dict file (.safetensors, .pth) of ``arch``; checked
    against ``arch`` and the classes (None: any)."""
    local = resolve(spec)
    if local.suffix in WEIGHTS_FILES:
        if arch is None:
            raise ValueError(f'{what}={spec!r} is a weights file: name its architecture (model.backbone)')
        if not local.is_file():
            raise FileNotFoundError(f'{what}={spec!r} does not exist')
        kwargs = {} if num_classes is None else dict(num_classes=num_classes)
        if arch.startswith(TORCHVISION_PREFIX):  # a torchvision network's own state_dict
            model = create_torchvision(arch, weights_file=local, **kwargs)
        else:
            model = load_weights(timm.create_model(arch, **kwargs), local)
    else:
        model = load_model(str(local) if local.exists() else spec, pretrained=True)
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


def build_teacher(cfg: Config, num_classes: int) -> Teacher:
    """The distillation teacher, checked against the data's classes: a model folder or name (at its own input
    size), or a weights file of the backbone's architecture (a converted network's own file, seeing the full
    image)."""
    if resolve(cfg.distill.teacher).suffix in WEIGHTS_FILES:
        network = load_network(cfg.distill.teacher, cfg.model.backbone, num_classes, 'distill.teacher')
        return Teacher(network, (cfg.data.img_size, cfg.data.img_size))
    local = resolve(cfg.distill.teacher)
    return load_teacher(str(local) if local.exists() else cfg.distill.teacher, num_classes)  # a folder, else a name


def set_trainable(model: nn.Module, stage: int, stage_cfg: StageConfig) -> bool:
    """requires_grad for what the stage trains; returns True when the WAE is frozen (kept in eval mode)."""
    wae = model.front_end if is_wae_model(model) and model.front_end.learned else None
    trains = STAGES[stage].trains
    model.requires_grad_(trains != 'front_end')
    if trains == 'front_end':
        wae.requires_grad_(True)
    elif trains == 'classifier' and wae is not None:
        if not stage_cfg.train_front_end:
            wae.requires_grad_(False)
            return True
        if wae.can_reconstruct:
            wae.decoder.requires_grad_(False)  # Decomposition+CNN: encoder on Lc only, no decoder
    return False


def criterion(stage_cfg: StageConfig) -> Callable[[Tensor, Tensor], Tensor]:
    """The classification loss of a stage, for class indices or mixup's soft targets. With mixup the smoothing
    is in the targets (``batch_mixer``), not in the loss."""
    mixing = stage_cfg.mixup > 0 or stage_cfg.cutmix > 0
    smoothing = 0. if mixing else stage_cfg.smoothing
    if stage_cfg.loss == 'bce':
        return timm.loss.BinaryCrossEntropy(smoothing=smoothing, target_threshold=stage_cfg.bce_target_thresh)
    return partial(F.cross_entropy, label_smoothing=smoothing)


def batch_mixer(stage: int, stage_cfg: StageConfig, num_classes: int) -> Optional[timm.data.Mixup]:
    """timm's mixup/cutmix for a classification stage (it returns soft targets), or None."""
    if not STAGES[stage].classify or (stage_cfg.mixup <= 0 and stage_cfg.cutmix <= 0):
        return None
    return timm.data.Mixup(mixup_alpha=stage_cfg.mixup, cutmix_alpha=stage_cfg.cutmix,
                           label_smoothing=stage_cfg.smoothing, num_classes=num_classes)


class Objective(nn.Module):
    """One stage's loss as a module: DDP must see the forward that uses the trained parameters."""

    def __init__(self, model: nn.Module, stage: int, stage_cfg: StageConfig, transform_loss: TransformLoss,
                 frozen_wae: bool = False, teacher: Optional[Teacher] = None, distill: Optional[DistillConfig] = None,
                 fixed_low_norm: bool = False, input_size: Optional[Tuple[int, int]] = None,
                 interpolation: str = 'bilinear'):
        super().__init__()
        self.model, self.stage, self.gamma, self.frozen_wae = model, STAGES[stage], stage_cfg.gamma, frozen_wae
        # the model's image size: crops made at a larger teacher's size are resized down for the student,
        # so every student of a comparison learns from the teacher's view of the full image
        self.input_size, self.interpolation = input_size, 'bicubic' if interpolation == 'bicubic' else 'bilinear'
        self.fixed_low_norm = fixed_low_norm
        self.transform_loss = transform_loss
        # distillation: classification stages only. Held outside the module tree (a tuple): checkpoints
        # then carry no copy of the teacher, which loads from its own file on resume
        self._teacher = (teacher,) if self.stage.classify and teacher is not None else ()
        self.distill_weight = distill.weight if distill else 0.
        self.kd = DistillationLoss(distill.temperature if distill else 1.)
        self.criterion = criterion(stage_cfg)

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
        """The stage's losses; ``y``: class indices, or mixup's soft targets [B, classes]."""
        m, x = self.model, x_full
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode=self.interpolation, antialias=True, align_corners=False)
        if not self.stage.classify:  # the WAE alone, decoder included
            low, high = m.front_end(x)
            t = self.transform_loss(x, m.front_end.reconstruct(low, high, x.shape[-2:]), high)
            return {'loss': t.loss, 'lt_recon': t.recon, 'lt_energy': t.energy}
        if not is_wae_model(m):  # plain timm model
            logits = m(x)
            lc = self.criterion(logits, y)
            return self._distill({'loss': lc, 'lc': lc, 'logits': logits}, x_full)
        out = m.forward_train(x, reconstruct=self.stage.transform)
        lc = m.classification_loss(out, y, self.criterion)
        if not self.stage.transform:
            return self._distill({'loss': lc, 'lc': lc, 'logits': out.logits}, x_full)
        t = self.transform_loss(x, out.recon, out.high)
        return self._distill({'loss': lc + self.gamma * t.loss, 'lc': lc, 'lt': t.loss, 'lt_recon': t.recon,
                              'lt_energy': t.energy, 'logits': out.logits}, x_full)


@torch.no_grad()
def recalibrate_batchnorm(objective: nn.Module, batches: Iterable[Tuple[Tensor, Tensor]]) -> int:
    """Re-estimate the running statistics of every BatchNorm that trains (a cumulative average over
    ``batches``, no gradient) before fine-tuning a trained network on a new input: at another resolution,
    or as IL, its statistics are the old input's (FixRes, Touvron et al., 2019). Frozen norms (a frozen
    WAE, a fixed IL standardisation) stay as they are. Returns the number of images seen."""
    objective.train()
    norms = [m for m in objective.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.training and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    seen = 0
    for x, y in batches:
        objective(x, y)
        seen += len(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return seen


def param_groups(model: nn.Module, stage_cfg: StageConfig, converted: bool) -> List[Dict]:
    """The optimizer's parameter groups: timm's (no weight decay on biases and norms); for a converted WAE
    model, groups of their own for what the trained network lacked: the parts that start at zero (the IH input
    channels of the layers that read IH, an IH branch, the fusion head) at lr times ``new_parts_lr_scale``, the
    front end (which starts as an exact transform) at lr times ``front_end_lr_scale``. In the layers that read
    IH only the new input channels are new: the gradient of their trained IL channels (and bias) is divided by
    the scale, so the trained weights move as the rest of the network does (SGD: the step is proportional to
    the gradient; Adam-type optimizers are not scale-free, so the scales are refused for them at configuration
    time)."""
    groups = param_groups_weight_decay(model, stage_cfg.weight_decay, getattr(model, 'no_weight_decay', set)())
    scale, fe_scale = stage_cfg.new_parts_lr_scale, stage_cfg.front_end_lr_scale
    if (scale == 1 and fe_scale == 1) or not converted or not is_wae_model(model):
        return groups
    factor = {id(p): 1. for p in model.network_parameters()}  # the trained network: the stage's lr
    factor.update({id(p): fe_scale for p in model.front_end.parameters()})
    il_chans = model.front_end.low_chans
    for name in model.ih_readers if scale != 1 else ():
        conv = model.backbone.get_submodule(name)
        conv.weight.register_hook(lambda g: torch.cat([g[:, :il_chans] / scale, g[:, il_chans:]], 1))
        if conv.bias is not None:
            conv.bias.register_hook(lambda g: g / scale)
    split = []
    for g in groups:  # each of timm's groups split by lr factor (the zero-started parts: all but those above)
        by_factor: Dict[float, List[nn.Parameter]] = {}
        for p in g['params']:
            by_factor.setdefault(factor.get(id(p), scale), []).append(p)
        split += [dict(g, params=ps, lr=stage_cfg.lr * f) for f, ps in by_factor.items()]
    return split
