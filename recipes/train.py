"""Train a WAE classifier (Chen et al., AAAI 2018) or one of the paper's baselines.

    accelerate launch [accelerate options] recipes/train.py recipes/configs/NAME.yaml [key=value ...]

One config file per experiment (recipes/configs/, every field documented in recipes/README.md);
dotted ``key=value`` arguments override any field (``data.max_per_class=20 stage2.epochs=3``).
The run is up to three stages (``timm_wae.training.config.STAGES``), each starting from the previous
stage's saved model:

    stage 1   the WAE alone (encoder + decoder) on the transform loss  Lt = lr + λ·le
    stage 2   the classifier on  Lc = CE(sL) + CE(sc), the WAE frozen (``train_front_end`` trains
              the encoder too, on Lc only: the Decomposition+CNN baseline)
    stage 3   everything on  Lc + γ·Lt, small learning rate

This script is the loop: one stage's training (``train_stage``, then its steps), then ``main``/``run`` (config, data,
teacher, the stages); its parts are ``timm_wae.training`` (config, stages and losses, data,
checkpoints, metrics). Every stage checkpoints (atomically) at each epoch end and every ``checkpoint_every``
steps; ``resume=true`` continues a killed run exactly where its last checkpoint was (data order and
augmentation are a function of (seed, epoch), not of the process).
"""
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from torchvision.datasets.folder import find_classes
from tqdm.auto import tqdm

from timm_wae import TransformLoss
from timm_wae.distill import Teacher
from timm_wae.evaluate import UnreadableImageError
from timm_wae.hub import push_to_hub
from timm_wae.models.wae import is_wae_model
from timm_wae.training import resolve
from timm_wae.training.checkpoint import (
    TRAINER_STATE,
    load_checkpoint,
    load_init,
    record_config,
    save_checkpoint,
    save_model,
    write_json_atomic,
)
from timm_wae.training.config import Config, StageConfig, check_output_dir, load_config
from timm_wae.training.data import (
    build_datasets,
    data_root,
    epoch_steps,
    loader_stats,
    model_data_config,
    start_epoch,
    train_loader,
)
from timm_wae.training.progress import MetricsLog, Progress, add_step, train_line, validate
from timm_wae.training.stages import (
    STAGES,
    Objective,
    batch_mixer,
    build_model,
    build_teacher,
    load_network,
    param_groups,
    recalibrate_batchnorm,
    set_trainable,
)


class NonFiniteLossError(RuntimeError):
    pass


def first_batches(loader: DataLoader, images: int, cfg: Config, accelerator: Accelerator):
    """The first training batches of epoch 0 (at least ``images`` images over all processes), on the device."""
    start_epoch(loader, 0, 0)
    for i, (x, y) in enumerate(loader):
        if i * len(x) * accelerator.num_processes >= images:
            break
        x = x.to(accelerator.device)
        yield (x.contiguous(memory_format=torch.channels_last) if cfg.model.channels_last else x), y.to(x.device)


@dataclass
class StageRun:
    """One stage's parts, as ``train_stage`` builds them; the steps below read them and advance ``progress``."""
    stage: int
    cfg: Config
    accelerator: Accelerator
    model: nn.Module
    objective: nn.Module
    transform_loss: TransformLoss
    optimizer: Any
    scheduler: Any
    loader: DataLoader
    steps_per_epoch: int
    ckpt_dir: Path
    init: Optional[Path]
    log: MetricsLog
    mixer: Any = None
    params: List[nn.Parameter] = field(default_factory=list)  # what trains (its gradient norm is clipped)
    held: List[nn.Parameter] = field(default_factory=list)  # held for the first hold_steps (a conversion)
    hold_steps: int = 0
    progress: Optional[Progress] = None

    def checkpoint(self) -> None:
        self.progress.metrics_bytes = self.log.size()
        save_checkpoint(self.ckpt_dir, self.accelerator, self.scheduler, self.progress)


def train_stage(stage: int, cfg: Config, accelerator: Accelerator, train_set, val_loader, classes: List[str],
                dc: Dict[str, Any], init: Optional[Path], log: MetricsLog, config_name: str,
                teacher: Optional[Teacher] = None) -> Path:
    """Train one stage (or finish it after a kill); returns the folder of its final model.

    On resume, metrics.jsonl is cut back to what the state resumed from had written: lines a
    killed run logged after its last checkpoint are written again, identically."""
    stage_cfg, main = cfg.stage(stage), accelerator.is_main_process
    stage_dir = resolve(cfg.output_dir) / f'stage{stage}'
    final, done_file, ckpt_dir = stage_dir / 'model', stage_dir / 'done.json', stage_dir / 'checkpoint'
    if cfg.resume and done_file.exists():
        accelerator.print(f'stage {stage}: already done ({final})')
        log.durable = json.loads(done_file.read_text())['metrics_bytes']
        return final
    stage_dir.mkdir(parents=True, exist_ok=True)

    set_seed(cfg.seed + stage)
    model, objective, transform_loss = build_objective(stage, cfg, len(classes), dc, init, teacher)
    loader = train_loader(train_set, stage_cfg.batch_size, cfg, accelerator)
    mixer = batch_mixer(stage, stage_cfg, len(classes))
    if mixer is not None and (stage_cfg.batch_size // accelerator.num_processes) % 2:
        raise ValueError(f'stage{stage}: mixup/cutmix pair the images of a batch: the per-process batch '
                         f'({stage_cfg.batch_size} / {accelerator.num_processes} processes) must be even')
    steps_per_epoch = min(epoch_steps(loader), stage_cfg.max_steps_per_epoch or math.inf)
    optimizer, scheduler = build_optimizer(model, stage_cfg, steps_per_epoch, cfg.model.backbone_from is not None)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    run = StageRun(stage, cfg, accelerator, model, objective, transform_loss, optimizer, scheduler, loader,
                   steps_per_epoch, ckpt_dir, init, log, mixer, [p for p in model.parameters() if p.requires_grad])
    # a conversion's warm-up: the trained network's parameters get no gradient for the first steps (its
    # BatchNorm statistics still follow IL), then everything trains
    if stage_cfg.hold_backbone_epochs:
        run.held = [p for p in model.network_parameters() if p.requires_grad]
        run.hold_steps = round(stage_cfg.hold_backbone_epochs * steps_per_epoch)
    run.progress = start_progress(run)
    n_train = sum(p.numel() for p in run.params)
    accelerator.print(f'stage {stage}: {n_train / 1e6:.2f}M trainable parameters, {stage_cfg.epochs} epochs of '
                      f'{steps_per_epoch} steps, batch {stage_cfg.batch_size} on {accelerator.num_processes} '
                      f'process(es)')

    val = {}
    for epoch in range(run.progress.epoch, stage_cfg.epochs):
        train_epoch(run, epoch)
        val = validate_epoch(run, epoch, val_loader)
    if not val:  # resumed after the last epoch's checkpoint: its val line is logged already
        val = validate_stage(run, val_loader)
    if main:
        save_model(model, final, cfg, stage, classes, dc, val, config_name)
        write_json_atomic(done_file, {'model': str(final), 'val': val, 'metrics_bytes': log.size()})
    accelerator.wait_for_everyone()
    log.durable = log.size()
    accelerator.free_memory()
    return final


def build_objective(stage: int, cfg: Config, num_classes: int, dc: Dict[str, Any], init: Optional[Path],
                    teacher: Optional[Teacher]):
    """The stage's model (from ``init`` when given), what it trains, and its loss module."""
    stage_cfg = cfg.stage(stage)
    model = build_model(cfg.model, num_classes, with_decoder=any(STAGES[s].transform for s in cfg.stages))
    if init is not None:
        load_init(model, init)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    frozen_wae = set_trainable(model, stage, stage_cfg)
    transform_loss = TransformLoss(stage_cfg.energy_weight)  # Lt of stages 1 and 3, in training and in val
    objective = Objective(model, stage, stage_cfg, transform_loss, frozen_wae, teacher, cfg.distill,
                          cfg.model.fixed_low_norm and is_wae_model(model),
                          (cfg.data.img_size, cfg.data.img_size), dc['interpolation'])
    return model, objective, transform_loss


def build_optimizer(model: nn.Module, stage_cfg: StageConfig, steps_per_epoch: int, converted: bool):
    """timm's optimizer over the stage's parameter groups, and its scheduler (stepped every update)."""
    groups = param_groups(model, stage_cfg, converted)
    optimizer = create_optimizer_v2(groups, opt=stage_cfg.opt, lr=stage_cfg.lr, weight_decay=stage_cfg.weight_decay,
                                    momentum=stage_cfg.momentum)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=stage_cfg.sched, num_epochs=stage_cfg.epochs, decay_epochs=stage_cfg.decay_epochs,
        decay_rate=stage_cfg.decay_rate, min_lr=stage_cfg.min_lr, warmup_lr=stage_cfg.warmup_lr,
        warmup_epochs=stage_cfg.warmup_epochs, step_on_epochs=stage_cfg.step_on_epochs,
        updates_per_epoch=steps_per_epoch)
    return optimizer, scheduler


def start_progress(run: StageRun) -> Progress:
    """Where the stage starts: its checkpoint on resume, else the beginning (BatchNorm recalibrated first when
    the stage asks for it)."""
    cfg, stage_cfg, accelerator = run.cfg, run.cfg.stage(run.stage), run.accelerator
    if cfg.resume:
        progress = load_checkpoint(run.ckpt_dir, accelerator, run.scheduler)
        if progress is not None:
            accelerator.print(f'stage {run.stage}: resuming at epoch {progress.epoch}, batch {progress.batch} '
                              f'(step {progress.step}) from {run.ckpt_dir}')
            run.log.truncate(progress.metrics_bytes)
            return progress
        run.log.truncate(run.log.durable)
    progress = Progress(metrics_bytes=run.log.size())
    if stage_cfg.recalibrate_bn:  # a fresh start: BatchNorm statistics for the new input first
        batches = first_batches(run.loader, stage_cfg.recalibrate_bn, cfg, accelerator)
        seen = recalibrate_batchnorm(run.objective, batches)
        accelerator.print(f'stage {run.stage}: BatchNorm statistics re-estimated on {seen} training images')
    return progress


def train_epoch(run: StageRun, epoch: int) -> None:
    """One epoch of optimizer steps (from ``progress.batch`` after a resume), metric lines every ``log_every``
    steps, checkpoints every ``checkpoint_every``; stops before the step on a non-finite loss or gradient."""
    cfg, stage, stage_cfg, progress = run.cfg, run.stage, run.cfg.stage(run.stage), run.progress
    accelerator, optimizer, held, hold_steps = run.accelerator, run.optimizer, run.held, run.hold_steps
    start_epoch(run.loader, epoch, progress.batch)
    run.scheduler.step(epoch)
    run.objective.train()
    bar = tqdm(total=run.steps_per_epoch, initial=progress.batch, disable=not accelerator.is_main_process,
               dynamic_ncols=True, desc=f'stage {stage} epoch {epoch + 1}/{stage_cfg.epochs}')
    tick = time.perf_counter()
    data_time = 0.
    for x, y in run.loader:
        if progress.batch >= run.steps_per_epoch:
            break
        x, y = x.to(accelerator.device, non_blocking=True), y.to(accelerator.device, non_blocking=True)
        if cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        data_time += time.perf_counter() - tick
        run.scheduler.step_update(progress.step)
        if held and held[0].requires_grad == (progress.step < hold_steps):
            for p in held:
                p.requires_grad_(progress.step >= hold_steps)
        # metrics: against the true labels (mixup's soft targets go to the loss only)
        out = run.objective(*(run.mixer(x, y) if run.mixer is not None else (x, y)))
        if cfg.debug.nan_at_step == progress.step:
            out['loss'] = out['loss'] * float('nan')
        loss = accelerator.reduce(out['loss'].detach().float(), 'mean').item()
        if not math.isfinite(loss):
            stop(run, bar, epoch, f'non-finite loss {loss}',
                 f'the loss is {loss} at step {progress.step} (epoch {epoch}, batch {progress.batch})',
                 f'or set stage{stage}.clip_grad')
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(out['loss'])
        grad_norm = float(accelerator.clip_grad_norm_(run.params, stage_cfg.clip_grad or math.inf))  # all-reduced grads
        if not math.isfinite(grad_norm) and accelerator.mixed_precision != 'fp16':  # fp16: the scaler skips
            stop(run, bar, epoch, 'non-finite gradient',
                 f'the loss is finite ({loss:.4g}) but the gradient norm is {grad_norm} at step {progress.step}',
                 f'set stage{stage}.clip_grad or use fp32')
        optimizer.step()

        # metric sums since the last line; reduced across processes when a line is written
        add_step(progress.meters, out, y, grad_norm, time.perf_counter() - tick, data_time)
        progress.step += 1
        progress.batch += 1
        bar.update(1)
        bar.set_postfix(loss=f'{loss:.4g}', lr=f'{optimizer.param_groups[0]["lr"]:.3g}', refresh=False)
        if progress.step % cfg.log_every == 0 or progress.batch == run.steps_per_epoch:
            log_line(run, bar, epoch)
        if cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0 \
                and progress.batch < run.steps_per_epoch:
            run.checkpoint()
        if cfg.debug.step_delay:
            time.sleep(cfg.debug.step_delay)
        tick, data_time = time.perf_counter(), 0.
    bar.close()


def log_line(run: StageRun, bar: tqdm, epoch: int) -> None:
    """Write the metric line of the steps since the last one (reduced across processes), and show it."""
    rec = train_line(run.progress.meters, run.accelerator, stage=run.stage, split='train', epoch=epoch,
                     step=run.progress.step, lr=run.optimizer.param_groups[0]['lr'])
    run.log.write(rec)
    bar.set_postfix({k: f'{rec[k]:.4g}' for k in ('loss', 'lc', 'lt', 'top1', 'top5', 'lr', 'img_per_s')
                     if k in rec}, refresh=True)
    run.progress.meters = {}


def stop(run: StageRun, bar: tqdm, epoch: int, error: str, what: str, remedy: str) -> NoReturn:
    """End the stage before the optimizer step: log the error, name the last good checkpoint."""
    bar.close()
    run.log.write({'stage': run.stage, 'epoch': epoch, 'step': run.progress.step, 'error': error})
    last_good = run.ckpt_dir if (run.ckpt_dir / TRAINER_STATE).exists() else \
        f'none in this stage yet (it starts from {run.init or "scratch"})'
    raise NonFiniteLossError(
        f'stage {run.stage}: {what}; stopped before updating the weights. Last good checkpoint: {last_good}. '
        f'Lower stage{run.stage}.lr (now {run.cfg.stage(run.stage).lr}), {remedy}, then run again with resume=true.')


def validate_stage(run: StageRun, val_loader) -> Dict[str, float]:
    """The val metrics of the stage's losses: classification when it classifies, Lt when it trains the WAE."""
    transform = run.transform_loss if STAGES[run.stage].transform else None
    return validate(run.model, val_loader, run.accelerator, STAGES[run.stage].classify, transform,
                    run.cfg.model.channels_last)


def validate_epoch(run: StageRun, epoch: int, val_loader) -> Dict[str, float]:
    """The epoch's end: its val line, a refusal of non-finite weights or metrics, then the checkpoint."""
    run.progress.epoch, run.progress.batch = epoch + 1, 0
    val = validate_stage(run, val_loader)
    run.log.write({'stage': run.stage, 'split': 'val', 'epoch': epoch, 'step': run.progress.step, **val})
    run.accelerator.print(f'stage {run.stage} epoch {epoch + 1}/{run.cfg.stage(run.stage).epochs} val: ' +
                          ', '.join(f'{k} {v:.4g}' for k, v in val.items()))
    bad = [k for k, v in val.items() if not math.isfinite(v)]
    if bad or not all(torch.isfinite(p).all() for p in run.model.parameters()):
        raise NonFiniteLossError(f'stage {run.stage}: non-finite weights or val metrics {bad} after epoch {epoch}; '
                                 f'the checkpoint of the previous epoch is kept')
    run.checkpoint()
    return val


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
    check_output_dir(cfg.output_dir)  # every process: none may wait for a main process that failed
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    record_config(out_dir, json.loads(json.dumps(cfg.to_dict())), cfg.resume, write=accelerator.is_main_process)

    # the data pipeline follows the model's timm data config (mean, std, interpolation, crop)
    probe = build_model(replace(cfg.model, backbone_from=None), cfg.model.num_classes or 2)  # no weights needed
    dc = model_data_config(probe, cfg.data)
    del probe
    with accelerator.main_process_first():  # the main process makes the synthetic set, if any
        root = data_root(cfg)
    teacher = None
    if cfg.distill.teacher is not None and cfg.mode == 'train':  # load and check it before any training
        n_classes = cfg.model.num_classes if cfg.data.dataset else len(find_classes(root / cfg.data.splits()[0])[0])
        teacher = build_teacher(cfg, n_classes).to(accelerator.device)
        accelerator.print(f'distillation: teacher {cfg.distill.teacher} at {teacher.input_size} px, '
                          f'weight {cfg.distill.weight}, temperature {cfg.distill.temperature}')
    # a lower-resolution student trains on crops at its teacher's size, resized down in the step
    train_size = max(cfg.data.img_size, *teacher.input_size) if teacher is not None else None
    train_set, val_set, classes = build_datasets(cfg.data, root, dc, accelerator, train_size, cfg.seed)
    if classes is None:  # a timm dataset that does not name its classes: model.num_classes (checked in the config)
        classes = [str(i) for i in range(cfg.model.num_classes)]
    if cfg.model.num_classes not in (None, len(classes)):
        raise ValueError(f'model.num_classes={cfg.model.num_classes} but {cfg.data.dataset or root} has '
                         f'{len(classes)} classes')
    ignored = [f'data.{k}' for k in ('max_per_class', 'val_max_per_class', 'cache', 'cache_size')
               if cfg.data.dataset and getattr(cfg.data, k)]
    if ignored:
        accelerator.print(f'note: {", ".join(ignored)} apply to ImageFolder roots, not to {cfg.data.dataset} '
                          f'(a stream\'s epoch length is data.num_samples): ignored')
    source = f'{cfg.data.dataset} from {root}' if cfg.data.dataset else f'cache={"on" if cfg.data.cache else "off"}'
    n_val = getattr(getattr(val_set, 'reader', None), 'num_samples', None) or len(val_set)  # a stream: the split's
    accelerator.print(f'data: {len(train_set)} train / {n_val} val images, {len(classes)} classes, '
                      f'{cfg.data.img_size} px, {source}')
    val_loader = DataLoader(val_set, batch_size=cfg.data.eval_batch_size, num_workers=cfg.data.workers)
    if not isinstance(val_set, IterableDataset):  # a stream is sharded over the processes by its reader
        val_loader = accelerator.prepare(val_loader)

    if cfg.mode == 'loader':  # the loader alone, to compare with the training step's images/s
        stats = loader_stats(train_set, cfg, accelerator)
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
        learned = is_wae_model(model) and model.front_end.learned and model.front_end.can_reconstruct
        transform = TransformLoss(cfg.stage3.energy_weight) if learned else None  # Lt as stage 3 weighs it
        val = validate(model, val_loader, accelerator, True, transform)
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
        url = push_to_hub(init, cfg.push_to_hub, commit_message=f'{config_name}: stages {cfg.stages}')
        accelerator.print(f'pushed {init} to {cfg.push_to_hub}: {url}')
    accelerator.wait_for_everyone()
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main(sys.argv[1:]))
    except (ValueError, FileNotFoundError, UnreadableImageError) as e:  # configuration, data, checkpoint problems:
        message = str(e).strip()                                        # one line, no traceback
        if 'Original Traceback' in message:  # raised in a DataLoader worker: the original error is the last line
            message = message.splitlines()[-1]
        print(f'error: {message}', file=sys.stderr)
        sys.exit(2)
