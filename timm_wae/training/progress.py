"""Where a stage is (saved in every checkpoint), its metric lines (metrics.jsonl) and the val pass."""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast
from torch import Tensor, nn

from ..evaluate import topk_hits
from ..front_ends import TransformLoss

__all__ = ['Progress', 'MetricsLog', 'add_step', 'train_line', 'validate']


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


def add_step(meters: Dict[str, float], out: Dict[str, Tensor], y: Tensor, grad_norm: float, seconds: float,
             data_seconds: float) -> None:
    """Add one step's losses, accuracy, gradient norm and time to this process's sums since the last line."""
    n = len(y)
    for k, v in out.items():
        if k != 'logits':
            meters[k] = meters.get(k, 0.) + v.item() * n
    if 'logits' in out:
        hits = topk_hits(out['logits'], y, min(5, out['logits'].shape[1]))
        meters['top1'] = meters.get('top1', 0.) + hits[:, 0].float().sum().item()
        meters['top5'] = meters.get('top5', 0.) + hits.any(dim=1).float().sum().item()
    meters['grad_norm'] = meters.get('grad_norm', 0.) + (grad_norm * n if math.isfinite(grad_norm) else 0.)
    meters['n'] = meters.get('n', 0.) + n
    meters['time'] = meters.get('time', 0.) + seconds
    meters['data_time'] = meters.get('data_time', 0.) + data_seconds


def train_line(meters: Dict[str, float], accelerator: Accelerator, **where: Any) -> Dict[str, Any]:
    """A train line of metrics.jsonl: every process's sums reduced, as means per image (accuracy in %)."""
    keys = sorted(meters)
    tot = accelerator.reduce(torch.tensor([meters[k] for k in keys], dtype=torch.float64,
                                          device=accelerator.device), 'sum').tolist()
    tot = dict(zip(keys, tot))
    wall = tot['time'] / accelerator.num_processes
    lr = where.pop('lr')
    rec = {**where, **{k: tot[k] / tot['n'] for k in keys if k not in ('n', 'time', 'data_time')},
           'lr': lr, 'img_per_s': tot['n'] / wall, 'data_frac': tot['data_time'] / tot['time']}
    for k in ('top1', 'top5'):
        if k in rec:
            rec[k] *= 100
    return rec


@torch.no_grad()
def validate(model: nn.Module, loader, accelerator: Accelerator, classify: bool,
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
                hits = topk_hits(logits, y, min(5, logits.shape[1]))
                cols += [F.cross_entropy(logits, y, reduction='none'), hits[:, 0].float(), hits.any(dim=1).float()]
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
