"""Where a WAE model's time goes: the front end, the standardisation, the backbone on IL, the IH
branch and the heads, each timed alone, interleaved in one process, next to the plain backbone.

    python recipes/profile_parts.py wae_resnet50 wae2_resnet50 [--img-size 224] [--batch-sizes 1,8] [--threads 2]

Each part runs on the input it gets inside the model (recorded from one forward pass), so the
parts' medians add up to about the model's; MACs per part come from torch's flop counter.
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List, Tuple

import timm
import torch

import timm_wae  # noqa: F401  (registers the models)
from timm_wae.bench import count_macs

from bench_front_ends import timing_arguments  # the script's own folder is on sys.path


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
    order = list(calls.items())
    for rep in range(repeats):
        shift = rep % len(order)
        for name, fn in order[shift:] + order[:shift]:
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('models', nargs='+')
    args = timing_arguments(p).parse_args()
    torch.set_num_threads(args.threads)
    print('| model | batch | part | median ms | share of the parts | GMAC |')
    print('|---|---|---|---|---|---|')
    for spec in args.models:
        model = timm.create_model(spec).eval()
        arch = model.backbone.pretrained_cfg['architecture']
        plain = timm.create_model(arch).eval()
        for batch in (int(b) for b in args.batch_sizes.split(',')):
            x = torch.randn(batch, 3, args.img_size, args.img_size)
            with torch.inference_mode():
                calls = parts(model, x)
                times = timed({**{k: v[0] for k, v in calls.items()}, 'whole model': lambda: model(x),
                               f'{arch} (plain)': lambda: plain(x)}, args.repeats)
            medians = {k: statistics.median(v) for k, v in times.items()}
            total = sum(medians[k] for k in calls)
            for name, (_, gmac) in calls.items():
                print(f'| {spec} | {batch} | {name} | {medians[name]:.2f} | {100 * medians[name] / total:.0f} % '
                      f'| {gmac:.3f} |')
            print(f"| {spec} | {batch} | whole model | {medians['whole model']:.2f} | | "
                  f"{count_macs(model, x.shape[1:]) / 1e9:.3f} |")
            print(f"| {spec} | {batch} | {arch} at {args.img_size} px | {medians[f'{arch} (plain)']:.2f} | | "
                  f"{count_macs(plain, x.shape[1:]) / 1e9:.3f} |")


if __name__ == '__main__':
    main()
