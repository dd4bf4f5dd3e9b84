"""The conversion study's CSV and figure, from its runs (recipes/conversion_rows.txt).

    python recipes/report_conversion.py [runs/conversion] [--teacher runs/pareto/lowres128_s0/stage2/model]
        [--csv docs/conversion_imagenette.csv] [--png docs/conversion_imagenette.png] [--ledger docs/conversion_runs.csv]
        [--page]
    python recipes/report_conversion.py --from-csv --page   # only the page's table, from the CSV (no runs needed)

The trained network is converted (``wae2``: WAEWrapper.from_trained) or fine-tuned at a lower
resolution (``lowres``), every row with the same teacher, schedule and tricks, at budgets of 1 and 3
epochs. Rows, seeds, errors and timings are read as recipes/report_pareto.py reads them (the eval files
on all of val, the one bench run over the rows' architectures, a ledger of every run's errors). Added
here: ``budget_epochs``; ``start_err``, the row's error before any fine-tune (the network on the 2x2-pooled
image for wae2, on the image at the row's size for lowres; measured here once and kept in
``measure/start_<kind><size>.json``); and, against the lower-resolution rows of the same budget,
``lowres_err_at_ms_b8``, ``gain_vs_lowres`` and ``speedup_vs_lowres`` (their curve's latency at the row's
error over the row's latency).
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

COLUMNS = ['row', 'kind', 'backbone', 'img_size', 'budget_epochs', 'seeds', 'top1_err', 'top1_err_spread', 'ms_b8',
           'start_err', 'top5_err', 'ms_b1', 'lowres_err_at_ms_b8', 'gain_vs_lowres', 'speedup_vs_lowres']
VAL = '../shared/data/imagenette160/val'
PAGE, TABLE = Path('docs/conversion.md'), 'conversion'  # the study's page and its table's markers


def start_error(kind: str, img_size: int, teacher: Path, measure: Path, val: str) -> float:
    """Top-1 error (%) on all of val of the row's model before any fine-tune (kept once measured)."""
    path = measure / f'start_{kind}{img_size}.json'
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


def rows_of(runs: Path, teacher: Path, ledger: Optional[Path], val: str,
            rows_file: Optional[Path] = None) -> List[Dict]:
    rows = []
    for r in collect(runs, ledger, rows_file):
        cfg = yaml.safe_load((runs / 'arch' / r['row'] / 'config.yaml').read_text())
        r['budget_epochs'] = cfg['stage2']['epochs']
        r['start_err'] = start_error(r['kind'], r['img_size'], teacher, runs / 'measure', val)
        rows.append(r)
    for r in rows:
        curve = [(o['ms_b8'], o['top1_err']) for o in rows
                 if o['kind'] == 'lowres' and o['budget_epochs'] == r['budget_epochs']]
        ref = interpolate(curve, r['ms_b8']) if curve and r['kind'] != 'lowres' else None
        at = inverse_interpolate(curve, r['top1_err']) if curve and r['kind'] != 'lowres' else None
        r.update(lowres_err_at_ms_b8=ref, gain_vs_lowres=None if ref is None else ref - r['top1_err'],
                 speedup_vs_lowres=None if at is None else at / r['ms_b8'])
    return sorted(rows, key=lambda r: (r['budget_epochs'], r['kind'], r['ms_b8']))


def plot(rows: List[Dict], path: Path, scratch: Optional[Dict]) -> None:
    """Error against batch-8 latency: one line per kind and budget, and where each row started."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 6))
    for (kind, budget), colour in zip(sorted({(r['kind'], r['budget_epochs']) for r in rows}), plt.cm.tab10.colors):
        pts = sorted((r for r in rows if (r['kind'], r['budget_epochs']) == (kind, budget)), key=lambda r: r['ms_b8'])
        ax.errorbar([p['ms_b8'] for p in pts], [p['top1_err'] for p in pts], yerr=[p['top1_err_spread'] for p in pts],
                    marker='o', capsize=3, color=colour, linestyle='-' if kind == 'lowres' else ':',
                    label=f'{kind}, {budget} epoch{"s" if budget > 1 else ""} of fine-tuning')
    starts = {(r['kind'], r['img_size']): (r['ms_b8'], r['start_err']) for r in rows}
    ax.scatter(*zip(*starts.values()), marker='x', color='grey', label='before any fine-tune')
    wae2_ms = [r['ms_b8'] for r in rows if r['kind'] == 'wae2']
    if scratch and wae2_ms:  # the same architecture: drawn at this bench's latency of the wae2 rows
        ax.scatter([sum(wae2_ms) / len(wae2_ms)], [scratch['top1_err']], marker='*', s=120, color='black',
                   label=f"wae2_stem trained from scratch, 12 epochs ({scratch['top1_err']:.2f} %)")
    ax.set_xlabel('latency, batch 8 (ms, CPU fp32, 2 threads)')
    ax.set_ylabel('top-1 error % (all 3,925 val images)')
    ax.set_title('Converting a trained resnet18 (Imagenette, 128 px): WAE2 against a lower resolution')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(rows: List[Dict]) -> str:
    """The page's table (docs/conversion.md), one line per row."""
    lines = ['| row | kind | px in | epochs | seeds | start err % | top-1 err % | top-5 err % | ms @8 '
             '| vs lowres (same budget) | speed-up at equal err |', '|' + '---|' * 11]
    for r in rows:
        speed = '' if r['speedup_vs_lowres'] is None else f"{fixed(r['speedup_vs_lowres'])}x"
        lines.append(f"| {r['row']} | {r['kind']} | {r['img_size']} | {r['budget_epochs']} | {r['seeds']} "
                     f"| {fixed(r['start_err'])} | {error_cell(r)} | {fixed(r['top5_err'])} | {fixed(r['ms_b8'], 1)} "
                     f"| {fixed(r['gain_vs_lowres'], sign=True)} | {speed} |")
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
        rows = rows_of(args.runs, args.teacher, args.ledger, args.val, args.rows)
        write_ledger(evaluations(args.runs / 'measure', args.ledger), args.ledger)
        write_csv(rows, args.csv, COLUMNS)
        scratch = None
        if args.scratch.is_file():
            scratch = next(({'top1_err': r['top1_err']} for r in read_csv(args.scratch) if r['row'] == 'wae2_stem'), None)
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
