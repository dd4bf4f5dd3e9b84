"""The speed-accuracy study's table, CSV and figure, from recipes/pareto_imagenette.sh's runs.

    python recipes/report_pareto.py [runs/pareto] [--csv docs/pareto_imagenette.csv] [--png docs/pareto_imagenette.png]
                                   [--ledger docs/pareto_runs.csv] [--rows recipes/pareto_rows.txt] [--page]
    python recipes/report_pareto.py --from-csv --page   # only the page's table, from the CSV (no runs needed)

One row per architecture (runs ``<row>_s<seed>``; the seeds of a row are averaged, the spread is
half their range). Errors come from ``measure/eval_<run>.json`` (all of val) and, for runs of
earlier studies whose folders are gone, from the ledger of every run's errors (docs/pareto_runs.csv,
which this script brings up to date with the eval files); timings and MACs from the one bench run
in ``measure/bench.json`` over ``arch/<row>`` (each row's architecture, untrained, at its own input
size: recipes/pareto_architectures.py) or, before those folders, over seed 0's model. For every row
that is not on the lower-resolution curve, ``lowres_err_at_ms_b8`` is that curve linearly
interpolated at the row's batch-8 latency and ``gain_vs_lowres`` how many top-1 points the row is
better (negative: worse); ``gain_vs_wavelet`` the same against the wavelet rows' curve;
``lowres_ms_at_err`` the batch-8 latency at which the lower-resolution curve reaches the row's error
and ``speedup_vs_lowres`` that over the row's latency (how much faster at equal accuracy; empty where
the curve does not reach the row's error). For a row more accurate than every point of the curve,
``speedup_vs_lowres_min`` is the curve's slowest point's latency over the row's: a bound, not an
extrapolation (a lower-resolution row can reach that error only beyond the curve's slowest point).
``levels``: the front end's Haar levels (2 for wae4). ``study`` is 'scratch' (trained from scratch) or
'converted' (fine-tuned from a trained network: ``init_from`` / ``model.backbone_from``); rows are
compared within their study and backbone. ``on_front``: no other row of the same study and backbone is
both faster (batch 8) and more accurate. ``--page`` writes the table of the rows trained from scratch, as the
CSV holds them, into the study's page (docs/speed_accuracy.md), so that its numbers live in the CSV only.
"""
import argparse
import csv
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_tables import write_table  # noqa: E402

PAGE, TABLE = Path('docs/speed_accuracy.md'), 'pareto'  # the study's page and its table's markers
COLUMNS = ['row', 'kind', 'study', 'backbone', 'levels', 'img_size', 'front_end', 'ih_fusion', 'seeds', 'top1_err',
           'top1_err_spread', 'top5_err', 'gmac', 'params_m', 'ms_b1', 'ms_b8', 'on_front', 'lowres_err_at_ms_b8',
           'gain_vs_lowres', 'lowres_ms_at_err', 'speedup_vs_lowres', 'speedup_vs_lowres_min', 'wavelet_err_at_ms_b8',
           'gain_vs_wavelet']
LEDGER_COLUMNS = ['run', 'top1_err', 'top5_err', 'source']


def kind_of(model_cfg: Dict) -> str:
    """lowres (the plain backbone), wavelet (a fixed DWT front end), wae (the paper), wae2 (the cheap WAE)."""
    if model_cfg.get('type') == 'timm':
        return 'lowres'
    front_end = model_cfg.get('front_end', 'wae')
    return {'dwt97': 'wavelet', 'haar': 'wavelet', 'resize': 'lowres'}.get(front_end, front_end)


def interpolate(curve: Sequence[tuple], x: float) -> Optional[float]:
    """The piecewise-linear curve [(x, y), ...] at x; None outside its range (no extrapolation)."""
    pts = sorted(curve)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[0][1] if len(pts) == 1 and pts[0][0] == x else None


def read_rows_file(table: Path) -> List[List[str]]:
    """A rows file's runs as [run, config, *overrides]; comments and blank lines skipped."""
    return [line.split() for line in table.read_text().splitlines() if line.strip() and not line.startswith('#')]


def row_of(run: str) -> str:
    m = re.fullmatch(r'(.+)_s(\d+)', run)
    return m.group(1) if m else run


def inverse_interpolate(curve: Sequence[tuple], y: float) -> Optional[float]:
    """The smallest x at which the piecewise-linear curve [(x, y), ...] (in x order) comes down to y;
    None where it never does (no extrapolation)."""
    pts = sorted(curve)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if min(y0, y1) <= y <= max(y0, y1):
            return x0 if y1 == y0 else x0 + (x1 - x0) * (y - y0) / (y1 - y0)
    return pts[0][0] if len(pts) == 1 and pts[0][1] == y else None


def read_ledger(path: Optional[Path]) -> Dict[str, Dict]:
    if path is None or not path.is_file():
        return {}
    with path.open() as f:
        # top-5 may be empty: a run recovered from a note that gave only its top-1
        return {r['run']: dict(r, top1_err=float(r['top1_err']), top5_err=float(r['top5_err']) if r['top5_err'] else None)
                for r in csv.DictReader(f)}


def evaluations(measure: Path, ledger: Optional[Path]) -> Dict[str, Dict]:
    """run -> {top1_err, top5_err, source}: the eval files, over the ledger's runs whose folders are gone."""
    runs = read_ledger(ledger)
    for f in sorted(measure.glob('eval_*.json')):
        clean = next(x for x in json.loads(f.read_text())['rows'] if x['noise_var'] == 0)
        runs[f.stem[len('eval_'):]] = {'top1_err': clean['top1_err'], 'top5_err': clean['top5_err'],
                                       'source': f'{f.name} ({clean.get("count", "?")} val images)'}
    return runs


def write_ledger(runs: Dict[str, Dict], path: Path) -> None:
    with path.open('w', newline='') as f:
        w = csv.DictWriter(f, LEDGER_COLUMNS)
        w.writeheader()
        for run in sorted(runs):
            r = runs[run]
            w.writerow({'run': run, 'top1_err': f"{r['top1_err']:.4f}",
                        'top5_err': '' if r['top5_err'] is None else f"{r['top5_err']:.4f}",
                        'source': r['source']})


def collect(runs: Path, ledger: Optional[Path] = None, rows_file: Optional[Path] = None) -> List[Dict]:
    """The study's rows; with ``rows_file``, only the runs it lists (a run taken out of it, such as one
    of a superseded recipe, keeps its errors in the ledger but leaves the table)."""
    measure = runs / 'measure'
    bench = json.loads((measure / 'bench.json').read_text())
    timing = {}
    for r in bench['results']:
        path = Path(r['model'])
        if r['dtype'] != 'fp32' or r['channels_last']:
            continue
        if path.parent.name == 'arch':  # an architecture folder of recipes/pareto_architectures.py
            timing[(path.name, r['batch_size'])] = r
        elif len(path.parts) >= 3:  # a run's model folder, <run>/stage<N>/model
            timing.setdefault((row_of(path.parts[-3]), r['batch_size']), r)
    groups: Dict[str, List[str]] = {}
    evals = evaluations(measure, ledger)
    listed = None if rows_file is None else {line[0] for line in read_rows_file(rows_file)}
    for run in sorted(r for r in evals if listed is None or r in listed):
        groups.setdefault(row_of(run), []).append(run)
    rows = []
    for row, members in groups.items():
        if (row, 8) not in timing:
            print(f'skip {row}: not in the bench run')
            continue
        config = next((f for f in [runs / 'arch' / row / 'config.yaml', *(runs / m / 'config.yaml' for m in members)]
                       if f.is_file()), None)
        if config is None:
            print(f'skip {row}: no config.yaml (run recipes/pareto_architectures.py)')
            continue
        cfg = yaml.safe_load(config.read_text())
        converted = cfg.get('init_from') or cfg['model'].get('backbone_from')
        top1 = [evals[m]['top1_err'] for m in members]
        top5 = [evals[m]['top5_err'] for m in members if evals[m]['top5_err'] is not None]
        t1, t8 = timing[(row, 1)], timing[(row, 8)]
        rows.append({
            'row': row, 'kind': kind_of(cfg['model']), 'study': 'converted' if converted else 'scratch',
            'backbone': cfg['model'].get('backbone', 'resnet18'),
            'levels': 2 if cfg['model'].get('front_end') == 'wae4' and cfg['model'].get('type') != 'timm' else 1,
            'img_size': t8['img_size'],
            'front_end': cfg['model'].get('front_end') if cfg['model'].get('type') != 'timm' else '',
            'ih_fusion': cfg['model'].get('ih_fusion', 'branch') if cfg['model'].get('type') != 'timm' else '',
            'seeds': len(members), 'top1_err': statistics.mean(top1), 'top1_err_spread': (max(top1) - min(top1)) / 2,
            'top5_err': statistics.mean(top5) if top5 else None, 'gmac': t8['gmacs'],
            'params_m': t8['params_m'], 'ms_b1': t1['median_ms'], 'ms_b8': t8['median_ms'],
        })
    for r in rows:
        peers = [o for o in rows if (o['study'], o['backbone']) == (r['study'], r['backbone'])]
        r['on_front'] = not any(o is not r and o['ms_b8'] <= r['ms_b8'] and o['top1_err'] <= r['top1_err'] and
                                (o['ms_b8'] < r['ms_b8'] or o['top1_err'] < r['top1_err']) for o in peers)
        for kind in ('lowres', 'wavelet'):
            curve = [(o['ms_b8'], o['top1_err']) for o in peers if o['kind'] == kind]
            compared = bool(curve) and r['kind'] != kind  # a row is not compared with its own kind's curve
            ref = interpolate(curve, r['ms_b8']) if compared else None
            r[f'{kind}_err_at_ms_b8'] = ref
            r[f'gain_vs_{kind}'] = None if ref is None else ref - r['top1_err']
            if kind == 'lowres':
                at = inverse_interpolate(curve, r['top1_err']) if compared else None
                r['lowres_ms_at_err'] = at
                r['speedup_vs_lowres'] = None if at is None else at / r['ms_b8']
                below = compared and r['top1_err'] < min(err for _, err in curve)
                r['speedup_vs_lowres_min'] = max(ms for ms, _ in curve) / r['ms_b8'] if below else None
    return sorted(rows, key=lambda r: (r['backbone'] != 'resnet18', r['backbone'], r['study'] != 'scratch',
                                       r['kind'], r['ms_b8']))


def write_csv(rows: List[Dict], path: Path, columns: Sequence[str] = COLUMNS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open('w', newline='') as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: ('' if r[k] is None else f'{r[k]:.4f}' if isinstance(r[k], float) else r[k])
                        for k in columns})


def plot(rows: List[Dict], path: Path, title: str) -> None:
    """One row of panels per backbone (its own error scale): error against batch-8 latency and GMAC."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    backbones = sorted({r['backbone'] for r in rows}, key=lambda b: (b != 'resnet18', b))
    fig, axes = plt.subplots(len(backbones), 2, figsize=(13, 5 * len(backbones)), squeeze=False)
    for row_axes, backbone in zip(axes, backbones):
        mine = [r for r in rows if r['backbone'] == backbone]
        for ax, key, xlabel in ((row_axes[0], 'ms_b8', 'latency, batch 8 (ms, CPU fp32, 2 threads)'),
                                (row_axes[1], 'gmac', 'GMAC per image')):
            for study, kind in sorted({(r['study'], r['kind']) for r in mine}):
                pts = sorted((r for r in mine if (r['study'], r['kind']) == (study, kind)), key=lambda r: r[key])
                ax.errorbar([p[key] for p in pts], [p['top1_err'] for p in pts],
                            yerr=[p['top1_err_spread'] for p in pts], marker='o' if study == 'scratch' else 's',
                            capsize=3, label=kind if study == 'scratch' else f'{kind} ({study})',
                            linestyle='-' if kind == 'lowres' else ':')
                for p in pts:
                    ax.annotate(p['row'], (p[key], p['top1_err']), fontsize=7, xytext=(4, 3), textcoords='offset points')
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        row_axes[0].set_ylabel(f'{backbone}: top-1 error % (all 3,925 val images)')
        row_axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches='tight')
    plt.close(fig)


def read_csv(path: Path) -> List[Dict]:
    """The rows of a CSV this script (or report_conversion.py) wrote, typed back: numbers, booleans, None."""
    def value(v: str):
        if v in ('', 'True', 'False'):
            return None if v == '' else v == 'True'
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v
    with path.open(newline='') as f:
        return [{k: value(v) for k, v in r.items()} for r in csv.DictReader(f)]


def fixed(v: Optional[float], places: int = 2, sign: bool = False) -> str:
    """``v`` to ``places`` decimals (Python's rounding of the CSV's value), a typographic minus; empty for None."""
    return '' if v is None else (f'{v:+.{places}f}' if sign else f'{v:.{places}f}').replace('-', '\N{MINUS SIGN}')


def error_cell(r: Dict) -> str:
    """Top-1 error with its spread (half the seeds' range) where a row has more than one seed."""
    return fixed(r['top1_err']) + (f" ± {fixed(r['top1_err_spread'])}" if r['seeds'] > 1 else '')


def markdown(rows: List[Dict]) -> str:
    """The page's table (docs/speed_accuracy.md): the rows trained from scratch, one line each."""
    speed = lambda r: (f"≥ {fixed(r['speedup_vs_lowres_min'])}x" if r['speedup_vs_lowres_min'] is not None else  # noqa: E731
                       '' if r['speedup_vs_lowres'] is None else f"{fixed(r['speedup_vs_lowres'])}x")
    lines = ['| row | backbone | px in | seeds | top-1 err % | top-5 err % | GMAC | ms @1 | ms @8 | on the front '
             '| vs lowres @8 | speed-up at equal err |', '|' + '---|' * 12]
    for r in rows:
        if r['study'] != 'scratch':
            continue
        lines.append(f"| {r['row']} | {r['backbone']} | {r['img_size']} | {r['seeds']} | {error_cell(r)} "
                     f"| {fixed(r['top5_err'])} | {fixed(r['gmac'], 3)} | {fixed(r['ms_b1'], 1)} | {fixed(r['ms_b8'], 1)} "
                     f"| {'yes' if r['on_front'] else 'no'} | {fixed(r['gain_vs_lowres'], sign=True)} | {speed(r)} |")
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('runs', nargs='?', default='runs/pareto', type=Path)
    p.add_argument('--csv', type=Path, default=Path('docs/pareto_imagenette.csv'))
    p.add_argument('--png', type=Path, default=Path('docs/pareto_imagenette.png'))
    p.add_argument('--ledger', type=Path, default=Path('docs/pareto_runs.csv'),
                   help="every run's errors, kept across studies (updated from the eval files)")
    p.add_argument('--rows', type=Path, help="the study's rows file: only its runs make the table (default: every run)")
    p.add_argument('--page', type=Path, nargs='?', const=PAGE,
                   help=f'write the table between the page\'s table:{TABLE} markers (alone: {PAGE})')
    p.add_argument('--from-csv', action='store_true', help='no runs: render the existing --csv (with --page)')
    args = p.parse_args(argv)
    if args.from_csv:
        rows = read_csv(args.csv)
    else:
        rows = collect(args.runs, args.ledger, args.rows)
        write_ledger(evaluations(args.runs / 'measure', args.ledger), args.ledger)
        write_csv(rows, args.csv)
        plot(rows, args.png, f'Imagenette ({args.runs.name}): trained from scratch (or converted), 12 epochs, bf16 training')
        rows = read_csv(args.csv)  # the page shows what the CSV holds, rounded as it is there
        print(f'wrote {args.csv} and {args.png}')
    table = markdown(rows)
    print(table)
    if args.page:
        write_table(args.page, TABLE, table)
        print(f'wrote the table into {args.page}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
