"""Where a WAE model's time goes: the front end, the standardisation, the backbone on IL, the IH
branch and the heads, each timed alone, interleaved in one process, next to the plain backbone at
the same input and at the input of equal MACs.

    python recipes/profile_parts.py wae_resnet50 wae2_resnet50 [--img-size 224] [--batch-sizes 1,8] [--threads 2]
    python recipes/profile_parts.py wae_resnet50 --reparam --ops 12   # the inference form; top operators too

Each part runs on the input it gets inside the model (recorded from one forward pass), so the
parts' medians add up to about the model's; MACs per part come from torch's flop counter.
``--ops N`` adds torch.profiler's N operators of most self time in the whole model (by input shape).
"""
import argparse
import random
import statistics
import time
from typing import Callable, Dict, List, Tuple

import timm
import torch
from bench_front_ends import timing_arguments  # the script's own folder is on sys.path

import timm_wae  # noqa: F401  (registers the models)
from timm_wae.bench import count_macs, same_macs_size


def parts(model, x: torch.Tensor) -> Dict[str, Tuple[Callable[[], torch.Tensor], float]]:
    """name -> (a call running that part on its recorded input, its MACs per image)."""
    low, high = model.decompose(x)
    feed, n_high = model.network_inputs(low, high)
    stem = model.ih_into_stem and high is not None
    f_low = model.backbone.forward_features(feed)
    calls = {
        'front end': lambda: model.decompose(x),
        'standardise': lambda: model.network_inputs(low, high),
        'backbone (IL' + (' + IH at the stem)' if stem else ')'): lambda: model.backbone.forward_features(feed),
    }
    features = f_low
    if n_high is not None:
        calls['IH branch'] = lambda: model.ih_branch.forward_features(n_high)
        features = model._join(f_low, model.ih_branch.forward_features(n_high))
    calls['heads'] = lambda: model.forward_head(features)
    one = slice(0, 1)
    macs = {
        'front end': count_macs(lambda t: model.decompose(t)[0], x.shape[1:]),
        'standardise': 0.0,
        'heads': count_macs(lambda t: model.forward_head(t), features.shape[1:]),
    }
    for name in calls:
        if name.startswith('backbone'):
            macs[name] = count_macs(lambda t: model.backbone.forward_features(t), feed[one].shape[1:])
        elif name == 'IH branch':
            macs[name] = count_macs(lambda t: model.ih_branch.forward_features(t), n_high[one].shape[1:])
    return {k: (v, macs[k] / 1e9) for k, v in calls.items()}


def timed(calls: Dict[str, Callable], repeats: int) -> Dict[str, List[float]]:
    times = {k: [] for k in calls}
    for fn in calls.values():
        fn()
    order, rng = list(calls.items()), random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)  # a new order each repeat, as timm_wae.bench.benchmark
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('models', nargs='+')
    p.add_argument('--reparam', action='store_true',
                   help='profile the inference form (timm.utils.reparameterize_model)')
    p.add_argument('--ops', type=int, default=0, metavar='N', help="also print the whole model's top N operators")
    args = timing_arguments(p).parse_args()
    torch.set_num_threads(args.threads)
    size = (3, args.img_size, args.img_size)
    rows, op_tables = [], []
    for spec in args.models:
        model = timm.create_model(spec).eval()
        if args.reparam:
            model = timm.utils.reparameterize_model(model)
        arch = model.backbone.pretrained_cfg['architecture']
        plain = timm.create_model(arch).eval()
        macs, plain_macs = count_macs(model, size), count_macs(plain, size)
        side = same_macs_size(macs, plain_macs, args.img_size)
        for batch in (int(b) for b in args.batch_sizes.split(',')):
            x = torch.randn(batch, *size)
            x_same = torch.randn(batch, 3, side, side)
            with torch.inference_mode():
                calls = parts(model, x)
                times = timed({**{k: v[0] for k, v in calls.items()}, 'whole model': lambda: model(x),
                               'plain': lambda: plain(x), 'plain same MACs': lambda: plain(x_same)}, args.repeats)
                if args.ops:
                    with torch.profiler.profile(record_shapes=True) as prof:
                        for _ in range(3):
                            model(x)
                    op_tables.append((f'{spec}, batch {batch} (3 calls)', prof.key_averages(group_by_input_shape=True)
                                      .table(sort_by='self_cpu_time_total', row_limit=args.ops,
                                             max_name_column_width=30, max_shapes_column_width=60)))
            medians = {k: statistics.median(v) for k, v in times.items()}
            total = sum(medians[k] for k in calls)
            rows += [(spec, batch, name, f'{medians[name]:.2f}', f'{100 * medians[name] / total:.0f} %', f'{gmac:.3f}')
                     for name, (_, gmac) in calls.items()]
            rows += [(spec, batch, 'whole model', f"{medians['whole model']:.2f}", '', f'{macs / 1e9:.3f}'),
                     (spec, batch, f'{arch} at {args.img_size} px', f"{medians['plain']:.2f}", '',
                      f'{plain_macs / 1e9:.3f}'),
                     (spec, batch, f'{arch} at {side} px (same MACs)', f"{medians['plain same MACs']:.2f}",
                      f"extra cost {100 * (medians['whole model'] / medians['plain same MACs'] - 1):+.0f} %",
                      f'{count_macs(plain, (3, side, side)) / 1e9:.3f}')]
    form = 'inference form (reparameterized)' if args.reparam else 'eager'
    print(f'{form}, {args.img_size} px, {args.threads} threads, median of {args.repeats} interleaved calls')
    print('| model | batch | part | median ms | share of the parts | GMAC |')
    print('|---|---|---|---|---|---|')
    for row in rows:
        print('| ' + ' | '.join(str(c) for c in row) + ' |')
    for title, table in op_tables:
        print(f'\n{title}\n{table}')


if __name__ == '__main__':
    main()
