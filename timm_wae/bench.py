"""Latency, throughput, parameters and MACs, with each WAE model timed beside its own backbone.

Ratios are only meaningful when both models run in the same process under the same load, so
the timing loop interleaves the models call by call and reports medians and p90s.
"""
import os
import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .evaluate import DTYPES

__all__ = ['BenchResult', 'OtherProcesses', 'benchmark', 'count_macs', 'format_table', 'results_as_dicts',
           'trust_warnings', 'same_macs_size']



@dataclass
class BenchResult:
    model: str
    baseline: Optional[str]      # the model this one is compared with (a WAE model's backbone)
    device: str
    dtype: str
    channels_last: bool
    batch_size: int
    median_ms: float
    p90_ms: float
    img_per_s: float
    params_m: float
    gmacs: float                 # per image
    speedup: Optional[float] = None  # baseline median / this median, same run
    img_size: Optional[int] = None   # input height (and width when square)
    threads: Optional[int] = None    # torch.get_num_threads() during the run (CPU)
    repeats: Optional[int] = None    # timed calls per model behind median and p90
    same_macs_baseline: Optional[str] = None  # the baseline at the input size of this model's MACs
    same_macs_speedup: Optional[float] = None
    other_cores: Optional[float] = None  # cores other processes kept busy during this setting's timing


def count_macs(model: nn.Module, input_size: Sequence[int], device: str = 'cpu') -> float:
    """Multiply-accumulates per image (torch's flop counter counts 2 flops per MAC)."""
    x = torch.randn(1, *input_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() / 2


def _percentile(values: List[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _timer(device: torch.device):
    """A callable timing fn() in ms: CUDA events on GPU, perf_counter on CPU."""
    if device.type == 'cuda':
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
    else:
        def run(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    return run


class OtherProcesses:
    """How many cores other processes kept busy, on average, during a ``with`` block: the machine's
    busy CPU time (Linux ``/proc/stat``) minus this process's own (all its threads, ONNX Runtime's
    included). Unlike the load average, this process's own work before the timing (compiling,
    calibrating) does not count. ``cores`` stays None where ``/proc/stat`` does not exist."""

    cores: Optional[float] = None

    @staticmethod
    def _busy_and_own() -> Optional[Tuple[float, float, float]]:
        try:
            with open('/proc/stat') as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        own = os.times()
        return (sum(fields[:8]) - idle) / os.sysconf('SC_CLK_TCK'), own.user + own.system, time.monotonic()

    def __enter__(self) -> 'OtherProcesses':
        self._start = self._busy_and_own()
        return self

    def __exit__(self, *exc) -> None:
        end = self._busy_and_own()
        if self._start is not None and end is not None and end[2] > self._start[2]:
            busy, own = end[0] - self._start[0], end[1] - self._start[1]
            self.cores = max(0.0, busy - own) / (end[2] - self._start[2])


def benchmark(
        models: Dict[str, nn.Module],
        baselines: Dict[str, Optional[str]],
        input_size: Union[Sequence[int], Dict[str, Sequence[int]]],
        batch_sizes: Sequence[int] = (1, 8),
        dtypes: Sequence[str] = ('fp32',),
        channels_last: Sequence[bool] = (False,),
        device: str = 'cpu',
        warmup: int = 3,
        repeats: int = 10,
        progress=None,
        same_macs: Optional[Dict[str, str]] = None,
        measure_as: Optional[Dict[str, str]] = None,
) -> List[BenchResult]:
    """Time every model at every setting; ``baselines`` maps a model to the one it is compared with.

    Each repeat calls every model once, in a new (seeded) random order, so that no model always runs
    right after the same neighbour (caches, clocks, a runtime's threads still spinning; a rotation
    would keep the neighbours). ``speedup`` is the
    baseline's median over this model's median, both from the same interleaved loop. ``input_size``
    is one (C, H, W) for all models or one per model (each model at its own resolution, e.g. a
    model trained at a lower resolution against a WAE model). ``same_macs`` maps a model to a
    second baseline (its backbone at the input size of equal MACs); ``measure_as`` maps a deployed
    form (compiled, ONNX Runtime) to the eager model whose parameters and MACs it has.
    """
    same_macs, measure_as = same_macs or {}, measure_as or {}
    dev = torch.device(device)
    timer = _timer(dev)
    sizes = {n: tuple(input_size[n] if isinstance(input_size, dict) else input_size) for n in models}
    info = {}
    for name, model in models.items():
        model.eval().to(dev)
        if name not in measure_as:
            info[name] = (sum(p.numel() for p in model.parameters()) / 1e6,
                          count_macs(model, sizes[name], device) / 1e9)
    info.update({name: info[eager] for name, eager in measure_as.items()})
    results = []
    settings = [(b, d, cl) for d in dtypes for cl in channels_last for b in batch_sizes]
    for batch, dtype_name, cl in settings:
        dtype = DTYPES[dtype_name]
        fmt = torch.channels_last if cl else torch.contiguous_format
        inputs = {size: torch.randn(batch, *size, device=dev).to(memory_format=fmt) for size in set(sizes.values())}
        times: Dict[str, List[float]] = {n: [] for n in models}
        with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
            for model in models.values():
                model.to(memory_format=fmt)
            for name, model in models.items():
                for _ in range(warmup):
                    model(inputs[sizes[name]])
            if dev.type == 'cuda':
                torch.cuda.synchronize(dev)
            order, rng = list(models.items()), random.Random(0)
            with OtherProcesses() as others:  # the timed calls only: not the warm-up (compiling)
                for _ in range(repeats):
                    rng.shuffle(order)
                    for name, model in order:
                        x = inputs[sizes[name]]
                        times[name].append(timer(lambda: model(x)))
                    if progress is not None:
                        progress()
        medians = {n: statistics.median(t) for n, t in times.items()}
        for name in models:
            base = baselines.get(name)
            results.append(BenchResult(
                model=name, baseline=base, device=str(dev), dtype=dtype_name, channels_last=cl,
                batch_size=batch, median_ms=medians[name], p90_ms=_percentile(times[name], 0.9),
                img_per_s=batch * 1e3 / medians[name], params_m=info[name][0], gmacs=info[name][1],
                speedup=medians[base] / medians[name] if base in medians else None,
                same_macs_baseline=same_macs.get(name),
                same_macs_speedup=medians[same_macs[name]] / medians[name] if name in same_macs else None,
                img_size=int(sizes[name][-2]), threads=torch.get_num_threads() if dev.type == 'cpu' else None,
                repeats=repeats, other_cores=others.cores,
            ))
    return results


def trust_warnings(results: List[BenchResult], max_spread: float = 1.25, max_other_cores: float = 0.25) -> List[str]:
    """Why the ratios of this run may not be trusted: timings that spread (p90 / median above
    ``max_spread``) or other processes busy on the CPU while timing (``other_cores``)."""
    out = []
    wide = [r for r in results if r.p90_ms > max_spread * r.median_ms]
    if wide:
        worst = max(wide, key=lambda r: r.p90_ms / r.median_ms)
        spread = worst.p90_ms / worst.median_ms
        out.append(f'{len(wide)} of {len(results)} timings spread: p90/median up to {spread:.2f} '
                   f'({worst.model}, batch {worst.batch_size}); the machine was busy or throttling')
    other = max((r.other_cores for r in results if r.other_cores is not None), default=None)
    if other is not None and other > max_other_cores:
        out.append(f'other processes kept up to {other:.2f} cores busy on average while timing: they shared the CPU')
    return out


def format_table(results: List[BenchResult]) -> str:
    """A Markdown table, one row per model and setting (the same-MACs columns when measured)."""
    macs = any(r.same_macs_baseline for r in results)
    head = ('| model | vs | device | dtype | ch_last | size | batch | median ms | p90 ms | img/s | params M '
            '| GMAC | speed-up |' + (' vs same MACs | speed-up |' if macs else ''))
    lines = [head, '|' + '---|' * (15 if macs else 13)]
    for r in results:
        speed = f'{r.speedup:.2f}x' if r.speedup is not None else ''
        line = (f'| {r.model} | {r.baseline or ""} | {r.device} | {r.dtype} | {"yes" if r.channels_last else "no"} '
                f'| {r.img_size} | {r.batch_size} | {r.median_ms:.1f} | {r.p90_ms:.1f} | {r.img_per_s:.1f} '
                f'| {r.params_m:.1f} | {r.gmacs:.2f} | {speed} |')
        if macs:
            same = f'{r.same_macs_speedup:.2f}x' if r.same_macs_speedup is not None else ''
            line += f' {r.same_macs_baseline or ""} | {same} |'
        lines.append(line)
    return '\n'.join(lines)


def results_as_dicts(results: List[BenchResult]) -> List[dict]:
    """The results as plain dicts (JSON-ready)."""
    return [asdict(r) for r in results]


def same_macs_size(wae_macs: float, backbone_macs: float, img_size: int, multiple: int = 16) -> int:
    """The input side at which the backbone costs what the WAE model costs at ``img_size`` (MACs grow
    with the pixel count), rounded to a multiple of ``multiple``."""
    return max(multiple, multiple * round(img_size * (wae_macs / backbone_macs) ** 0.5 / multiple))
