"""Training images/s of a recipe's model on synthetic data: the step of recipes/train.py (the stage's
``Objective``, optimizer, mixup/cutmix and loss; bf16 autocast on CUDA) without its data pipeline, so a
GPU's number can be read beside the loader's (``mode=loader``).

    python recipes/train_throughput.py recipes/configs/imagenet/wae2_resnet50_a3.yaml [key=value ...] \
        [--stage 2] [--batch 256] [--steps 300] [--device cuda]
"""
import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2

from timm_wae import TransformLoss
from timm_wae.training.config import load_config
from timm_wae.training.stages import STAGES, Objective, batch_mixer, build_model, set_trainable


def measure(cfg, stage: int, batch: int, steps: int, warmup: int, device: str) -> dict:
    """Images per second over ``steps`` optimizer steps of ``stage`` after ``warmup`` untimed ones."""
    stage_cfg, n = cfg.stage(stage), cfg.model.num_classes or 1000
    dev = torch.device(device)
    model = build_model(cfg.model, n, with_decoder=STAGES[stage].transform)
    frozen = set_trainable(model, stage, stage_cfg)
    fmt = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=fmt)
    objective = Objective(model, stage, stage_cfg, TransformLoss(stage_cfg.energy_weight), frozen).train()
    optimizer = create_optimizer_v2(model, opt=stage_cfg.opt, lr=stage_cfg.lr, weight_decay=stage_cfg.weight_decay,
                                    momentum=stage_cfg.momentum)
    mixer = batch_mixer(stage, stage_cfg, n)
    size = cfg.data.img_size
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, n, (batch,), device=dev)
    autocast = torch.autocast('cuda', dtype=torch.bfloat16) if dev.type == 'cuda' else nullcontext()

    def step():
        with autocast:
            out = objective(*(mixer(x.clone(), y) if mixer is not None else (x, y)))
        optimizer.zero_grad(set_to_none=True)
        out['loss'].backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if dev.type == 'cuda':
        torch.cuda.synchronize(dev)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == 'cuda':
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start
    return {'stage': stage, 'backbone': cfg.model.backbone, 'front_end': cfg.model.front_end if cfg.model.type == 'wae'
            else 'none', 'img_size': size, 'batch': batch, 'opt': stage_cfg.opt, 'loss': stage_cfg.loss,
            'device': str(dev), 'dtype': 'bf16' if dev.type == 'cuda' else 'fp32', 'steps': steps,
            'img_per_s': round(batch * steps / seconds, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config')
    p.add_argument('overrides', nargs='*', metavar='key=value')
    p.add_argument('--stage', type=int, help='default: the config\'s last stage')
    p.add_argument('--batch', type=int, default=64, help='images per step (one process)')
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--warmup', type=int, default=20)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--json', action='store_true', help='one JSON line instead of the table')
    args = p.parse_intermixed_args()
    cfg = load_config(args.config, args.overrides)
    row = {'config': Path(args.config).stem, **measure(cfg, args.stage or cfg.stages[-1], args.batch, args.steps,
                                                       args.warmup, args.device)}
    if args.json:
        print(json.dumps(row))
        return
    print('| ' + ' | '.join(row) + ' |\n|' + '---|' * len(row) + '\n| ' + ' | '.join(map(str, row.values())) + ' |')


if __name__ == '__main__':
    main()
