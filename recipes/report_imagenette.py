"""Turn the Imagenette runs and measurements into docs/reproduction.md's tables and a curve figure.

    python recipes/report_imagenette.py [runs/imagenette]

Reads each run's metrics.jsonl and the JSON written by recipes/measure_imagenette.sh; prints
Markdown tables and writes docs/<name of the runs folder>_curves.png. Where a row has two seeds
it prints the mean and half the range (the spread).
"""
import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

RUNS = Path(sys.argv[1] if len(sys.argv) > 1 else 'runs/imagenette')
MEASURE = RUNS / 'measure'
# table row -> eval JSON names under measure/ (seed 0 first: its model is the one the bench timed;
# each eval JSON names its model folder, so the folders live only in measure_imagenette.sh)
ROWS = {
    'Full resolution (resnet18, 128 px)': ['full_resolution_s0', 'full_resolution_s1'],
    'IR (half-resolution resize)': ['ir'],
    'Wavelet+CNN (9/7 DWT)': ['wavelet_cnn_s0', 'wavelet_cnn_s1'],
    'Decomposition+CNN': ['decomposition_cnn'],
    'IL only': ['il_only'],
    'WAE without joint fine-tuning': ['wae_no_stage3_s0', 'wae_no_stage3_s1'],
    'WAE': ['wae_s0', 'wae_s1'],
}


def load(path: Path):
    return json.loads(path.read_text())


def mean_spread(values):
    """'m' for one value, 'm ± s' (s = half the range) for several."""
    if len(values) == 1:
        return f'{values[0]:.2f}'
    return f'{statistics.mean(values):.2f} ± {(max(values) - min(values)) / 2:.2f}'


def clean_row(name: str) -> dict:
    return next(r for r in load(MEASURE / f'eval_{name}.json')['rows'] if r['noise_var'] == 0)


def main() -> None:
    bench = load(MEASURE / 'bench.json')
    timing = {(r['model'], r['batch_size']): r for r in bench['results'] if r['dtype'] == 'fp32' and not r['channels_last']}
    full = clean_row('full_resolution_s0')['model']
    print(f"Bench: {bench['environment']}, threads {bench['settings']['threads']}, "
          f"input {bench['settings']['input_size']}, repeats {bench['settings']['repeats']}\n")
    print('| row | top-1 err % | top-5 err % | seeds | ms @1 | ms @8 | speed-up @1 | speed-up @8 | GMAC | params M |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for title, names in ROWS.items():
        evals = [clean_row(n) for n in names if (MEASURE / f'eval_{n}.json').is_file()]
        if not evals or (evals[0]['model'], 1) not in timing:  # a grid cut short: say so, don't guess
            print(f'| {title} | not run in {RUNS.name} |' + ' |' * 8)
            continue
        t1, t8 = timing[(evals[0]['model'], 1)], timing[(evals[0]['model'], 8)]
        f1, f8 = timing[(full, 1)], timing[(full, 8)]
        print(f"| {title} | {mean_spread([e['top1_err'] for e in evals])} | {mean_spread([e['top5_err'] for e in evals])} "
              f"| {len(evals)} | {t1['median_ms']:.1f} | {t8['median_ms']:.1f} | {f1['median_ms'] / t1['median_ms']:.2f}x "
              f"| {f8['median_ms'] / t8['median_ms']:.2f}x | {t1['gmacs']:.3f} | {t1['params_m']:.2f} |")
    print(f"\n(val images per row: {clean_row('wae_s0')['count']})\n")

    print('| noise variance V | full resolution (seed 0) top-1 err % | WAE (seed 0) top-1 err % |')
    print('|---|---|---|')
    full, wae = (load(MEASURE / f'noise_{n}.json')['rows'] for n in ('full_resolution_s0', 'wae_s0'))
    for f, w in zip(full, wae):
        print(f"| {f['noise_var']:g} | {f['top1_err']:.2f} | {w['top1_err']:.2f} |")

    fig, ax = plt.subplots(figsize=(8, 5))
    for run in sorted(p for p in RUNS.iterdir() if (p / 'metrics.jsonl').is_file()):
        rows = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines() if line.strip()]
        val = [r for r in rows if r.get('split') == 'val' and r['stage'] in (2, 3)]
        if val:
            last2 = max(v['epoch'] for v in val if v['stage'] == 2)  # stage 3's epochs come after
            xs = [r['epoch'] + (last2 + 1 if r['stage'] == 3 else 0) for r in val]
            ax.plot(xs, [100 - r['top1'] for r in val], marker='o', label=run.name)
    ax.set_xlabel('epoch: stage 2, then stage 3 (WAE rows)')
    ax.set_ylabel('val top-1 error % (1,000 val images)')
    ax.set_title(f'Imagenette ({RUNS.name}), resnet18 from scratch, 128 px input')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    Path('docs').mkdir(exist_ok=True)
    out = Path('docs') / f'{RUNS.name}_curves.png'
    fig.savefig(out, dpi=110, bbox_inches='tight')
    print(f'\nwrote {out}')


if __name__ == '__main__':
    main()
