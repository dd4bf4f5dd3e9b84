"""The conversion study's CSV and figure, from its runs (recipes/conversion_rows.txt).

    python recipes/report_conversion.py [runs/conversion] [--teacher runs/pareto/lowres128_s0/stage2/model]
        [--csv docs/conversion_imagenette.csv] [--png docs/conversion_imagenette.png] [--ledger docs/conversion_runs.csv]
        [--page]
    python recipes/report_conversion.py --from-csv --page   # only the page's table, from the CSV (no runs needed)

The trained network is converted (``wae2``: WAEWrapper.from_trained) or fine-tuned at a lower
resolution (``lowres``), every row of a series with the same teacher, schedule and tricks. Two series:
``c128``, WAE2 reading 128 px images (a 64 px backbone), budgets of 1 and 3 epochs, its teacher trained on
2026-12-02 (its runs are gone: errors from the ledger, start errors kept from the CSV); ``c160`` (rows
named ``c160_*``), WAE2 reading 160 px images (an 80 px backbone), budgets of 1, 3 and 6 epochs, with its
teacher as a row of kind ``teacher`` (``c160_teacher``, timed in the same bench run). Rows, seeds, errors and timings are read as recipes/report_pareto.py reads them (the eval files
on all of val, the one bench run over the rows' architectures, a ledger of every run's errors). Added
here: ``budget_epochs``; ``start_err``, the row's error before any fine-tune (the network on the 2x2-pooled
image for wae2, on the image at the row's size for lowres; measured here once and kept in
``measure/start_<kind><size>.json``); and, against the lower-resolution rows of the same budget,
``lowres_err_at_ms_b8``, ``gain_vs_lowres`` and ``speedup_vs_lowres`` (their curve's latency at the row's
error over the row's latency); against the series' teacher row, ``err_vs_teacher`` (top-1 points; positive:
behind it) and ``speedup_vs_teacher`` (its batch-8 latency over the row's).
"""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from doc_tables import write_table  # noqa: E402
from report_pareto import (collect, error_cell, evaluations, fixed, interpolate, inverse_interpolate,  # noqa: E402
                           read_csv, write_csv, write_ledger)

COLUMNS = ['row', 'series', 'kind', 'backbone', 'img_size', 'budget_epochs', 'seeds', 'top1_err', 'top1_err_spread',
           'ms_b8', 'start_err', 'top5_err', 'ms_b1', 'lowres_err_at_ms_b8', 'gain_vs_lowres', 'speedup_vs_lowres',
           'err_vs_teacher', 'speedup_vs_teacher']
VAL = '../shared/data/imagenette160/val'
PAGE, TABLE = Path('docs/conversion.md'), 'conversion'  # the study's page and its table's markers


def series_of(row: str) -> str:
    """'c160' for the rows named c160_*, else 'c128' (the first series, named before there were two)."""
    return 'c160' if row.startswith('c160_') else 'c128'


def start_error(kind: str, img_size: int, teacher: Path, measure: Path, val: str, series: str) -> float:
    """Top-1 error (%) on all of val of the row's model before any fine-tune (kept once measured)."""
    path = measure / f'start_{series}_{kind}{img_size}.json'
    if not path.is_file():
        import torch
        from timm_wae import WAEWrapper, load_model
        from timm_wae.evaluate import evaluate
        torch.set_num_threads(2)
        network = load_model(str(teacher)).eval()
        model = WAEWrapper.from_trained(network, front_end=kind, ih_fusion='stem').eval() if kind != 'lowres' else network
        row = evaluate(model, val, img_size=img_size, workers=0, model_name=f'start_{kind}{img_size}')[0]
        path.write_text(json.dumps(row, indent=1))
    return json.loads(path.read_text())['top1_err']


def rows_of(runs: Path, teacher: Path, ledger: Optional[Path], val: str, rows_file: Optional[Path] = None,
            earlier: Optional[Dict[str, Dict]] = None) -> List[Dict]:
    """The rows, with their series' comparisons; ``earlier``: the CSV's rows so far (the c128 series' start
    errors, measured with a teacher that is gone)."""
    rows = []
    for r in collect(runs, ledger, rows_file):
        cfg = yaml.safe_load((runs / 'arch' / r['row'] / 'config.yaml').read_text())
        r.update(series=series_of(r['row']), budget_epochs=cfg['stage2']['epochs'])
        if r['row'].endswith('_teacher'):
            r.update(kind='teacher', budget_epochs=0, start_err=None)
        elif r['series'] == 'c128':
            r['start_err'] = (earlier or {}).get(r['row'], {}).get('start_err')
        else:
            r['start_err'] = start_error(r['kind'], r['img_size'], teacher, runs / 'measure', val, r['series'])
        rows.append(r)
    for r in rows:
        same = [o for o in rows if o['series'] == r['series']]
        curve = [(o['ms_b8'], o['top1_err']) for o in same if o['kind'] == 'lowres' and o['budget_epochs'] == r['budget_epochs']]
        compared = curve and r['kind'] not in ('lowres', 'teacher')
        ref = interpolate(curve, r['ms_b8']) if compared else None
        at = inverse_interpolate(curve, r['top1_err']) if compared else None
        t = next((o for o in same if o['kind'] == 'teacher'), None)
        r.update(lowres_err_at_ms_b8=ref, gain_vs_lowres=None if ref is None else ref - r['top1_err'],
                 speedup_vs_lowres=None if at is None else at / r['ms_b8'],
                 err_vs_teacher=None if t is None or t is r else r['top1_err'] - t['top1_err'],
                 speedup_vs_teacher=None if t is None or t is r else t['ms_b8'] / r['ms_b8'])
    return sorted(rows, key=lambda r: (r['series'], r['budget_epochs'], r['kind'], r['ms_b8']))


def plot(rows: List[Dict], path: Path, scratch: Dict[str, float]) -> None:
    """Error against batch-8 latency, one panel per series: a line per kind and budget, where each row
    started, the teacher, and the same WAE2 architecture trained from scratch."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    series = sorted({r['series'] for r in rows})
    fig, axes = plt.subplots(1, len(series), figsize=(8 * len(series), 6), squeeze=False)
    for ax, name in zip(axes[0], series):
        mine = [r for r in rows if r['series'] == name]
        groups = sorted({(r['kind'], r['budget_epochs']) for r in mine if r['kind'] != 'teacher'})
        for (kind, budget), colour in zip(groups, plt.cm.tab10.colors):
            pts = sorted((r for r in mine if (r['kind'], r['budget_epochs']) == (kind, budget)), key=lambda r: r['ms_b8'])
            ax.errorbar([p['ms_b8'] for p in pts], [p['top1_err'] for p in pts],
                        yerr=[p['top1_err_spread'] for p in pts], marker='o', capsize=3, color=colour,
                        linestyle='-' if kind == 'lowres' else ':',
                        label=f'{kind}, {budget} epoch{"s" if budget > 1 else ""} of fine-tuning')
        starts = {(r['kind'], r['img_size']): (r['ms_b8'], r['start_err']) for r in mine if r['start_err'] is not None}
        if starts:
            ax.scatter(*zip(*starts.values()), marker='x', color='grey', label='before any fine-tune')
        for t in (r for r in mine if r['kind'] == 'teacher'):
            ax.scatter([t['ms_b8']], [t['top1_err']], marker='s', s=60, color='black',
                       label=f"the teacher, {t['img_size']} px ({t['top1_err']:.2f} %)")
        wae2 = [r for r in mine if r['kind'] == 'wae2']
        size = wae2[0]['img_size'] if wae2 else None
        if size in scratch:  # the same architecture: drawn at this bench's latency of the wae2 rows
            ax.scatter([sum(r['ms_b8'] for r in wae2) / len(wae2)], [scratch[size]], marker='*', s=120,
                       color='tab:red', label=f'wae2 from {size} px trained from scratch, 12 epochs ({scratch[size]:.2f} %)')
        ax.set_xlabel('latency, batch 8 (ms, CPU fp32, 2 threads)')
        ax.set_ylabel('top-1 error % (all 3,925 val images)')
        ax.set_title(f'Converting a trained resnet18 (Imagenette): WAE2 from {size} px images against a lower resolution',
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(rows: List[Dict]) -> str:
    """The page's table (docs/conversion.md), one line per row."""
    times = lambda v: '' if v is None else f'{fixed(v)}x'  # noqa: E731
    lines = ['| row | series | kind | px in | epochs | seeds | start err % | top-1 err % | top-5 err % | ms @8 '
             '| vs lowres (same budget) | speed-up at equal err | vs teacher | speed-up vs teacher |', '|' + '---|' * 14]
    for r in rows:
        lines.append(f"| {r['row']} | {r['series']} | {r['kind']} | {r['img_size']} | {r['budget_epochs']} | {r['seeds']} "
                     f"| {fixed(r['start_err'])} | {error_cell(r)} | {fixed(r['top5_err'])} | {fixed(r['ms_b8'], 1)} "
                     f"| {fixed(r['gain_vs_lowres'], sign=True)} | {times(r['speedup_vs_lowres'])} "
                     f"| {fixed(r['err_vs_teacher'], sign=True)} | {times(r['speedup_vs_teacher'])} |")
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('runs', nargs='?', default='runs/conversion', type=Path)
    p.add_argument('--teacher', type=Path, default=Path(os.environ.get('TEACHER', 'runs/pareto/lowres128_s0/stage2/model')),
                   help='the converted network (default: $TEACHER, as recipes/pareto_imagenette.sh sets it)')
    p.add_argument('--val', default=VAL)
    p.add_argument('--csv', type=Path, default=Path('docs/conversion_imagenette.csv'))
    p.add_argument('--png', type=Path, default=Path('docs/conversion_imagenette.png'))
    p.add_argument('--ledger', type=Path, default=Path('docs/conversion_runs.csv'))
    p.add_argument('--scratch', type=Path, default=Path('docs/pareto_imagenette.csv'),
                   help="the from-scratch study's CSV: its wae2_stem row is drawn for reference")
    p.add_argument('--rows', type=Path, help="the study's rows file: only its runs make the table (default: every run)")
    p.add_argument('--page', type=Path, nargs='?', const=PAGE,
                   help=f'write the table between the page\'s table:{TABLE} markers (alone: {PAGE})')
    p.add_argument('--from-csv', action='store_true', help='no runs: render the existing --csv (with --page)')
    args = p.parse_args(argv)
    if not args.from_csv:
        earlier = {r['row']: r for r in read_csv(args.csv)} if args.csv.is_file() else {}
        rows = rows_of(args.runs, args.teacher, args.ledger, args.val, args.rows, earlier)
        write_ledger(evaluations(args.runs / 'measure', args.ledger), args.ledger)
        write_csv(rows, args.csv, COLUMNS)
        scratch = {}  # input size -> the from-scratch wae2 (stem) row's error
        if args.scratch.is_file():
            scratch = {r['img_size']: r['top1_err'] for r in read_csv(args.scratch)
                       if r['kind'] == 'wae2' and r['ih_fusion'] == 'stem' and r['study'] == 'scratch'
                       and r['backbone'] == 'resnet18'}
        plot(rows, args.png, scratch)
        print(f'wrote {args.csv} and {args.png}')
    table = markdown(read_csv(args.csv))  # the page shows what the CSV holds, rounded as it is there
    print(table)
    if args.page:
        write_table(args.page, TABLE, table)
        print(f'wrote the table into {args.page}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
