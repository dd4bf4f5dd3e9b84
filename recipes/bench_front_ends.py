"""Time the front ends alone, side by side in one process: what each costs before the backbone.

    python recipes/bench_front_ends.py [--img-size 224] [--batch-sizes 1,8] [--threads 2] [--repeats 15]

Each front end maps the image to (IL, IH); the table's speed-up column is against the paper's WAE
encoder, timed in the same interleaved loop (``timm_wae.bench.benchmark``).
"""
import argparse

import torch
from torch import nn

from timm_wae.bench import benchmark, format_table
from timm_wae.front_ends import FRONT_ENDS, create_front_end


class Encoder(nn.Module):
    """A front end's inference part (a learned WAE's encoder, never its decoder), returning IL: the
    timing loop wants one tensor out."""

    def __init__(self, name: str):
        super().__init__()
        self.front_end = create_front_end(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.front_end(x)[0]


def timing_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every timing script here shares (recipes/profile_parts.py too)."""
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--batch-sizes', default='1,8')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--repeats', type=int, default=15)
    return p


def main() -> None:
    args = timing_arguments(argparse.ArgumentParser(description=__doc__.split('\n\n')[0])).parse_args()
    torch.set_num_threads(args.threads)
    models = {f'{name} front end': Encoder(name) for name in FRONT_ENDS}
    baselines = {n: 'wae front end' for n in models if n != 'wae front end'}
    results = benchmark(models, baselines, (3, args.img_size, args.img_size),
                        batch_sizes=[int(b) for b in args.batch_sizes.split(',')], repeats=args.repeats)
    print(format_table(results))


if __name__ == '__main__':
    main()
