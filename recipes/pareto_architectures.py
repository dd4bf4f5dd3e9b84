"""Every speed-accuracy row's architecture, untrained, for the study's one bench run.

    python recipes/pareto_architectures.py runs/pareto/arch [--rows recipes/pareto_rows.txt]

Latency depends on the architecture, not on the weights, so every row is timed from a folder made
here from its first run's config (recipes/pareto_rows.txt): rows trained earlier, whose
run folders are gone, are timed in the same bench run as today's. Each folder holds the model in
the Hub layout at the row's input size (what `timm-wae bench --img-size native` reads) and the
row's config.yaml (what recipes/report_pareto.py reads: kind, backbone, front end, study).
"""
import argparse
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report_pareto import read_rows_file, row_of  # noqa: E402

from timm_wae.training.config import load_config  # noqa: E402
from timm_wae.training.data import model_data_config  # noqa: E402
from timm_wae.training.stages import build_model  # noqa: E402
from timm_wae.weights import save_pretrained  # noqa: E402

NUM_CLASSES = 10  # Imagenette


def rows(table: Path):
    """row -> (config name, overrides, the trained network it starts from) of the row's first run; the
    network ($OUT/...) only marks the row as converted: the architecture is the same without it."""
    seen = {}
    for run, config, *overrides in read_rows_file(table):
        start = {k: v for k, _, v in (o.partition('=') for o in overrides) if k in ('init_from', 'model.backbone_from')}
        seen.setdefault(row_of(run), (config, [o for o in overrides if '$' not in o], start))
    return seen


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('out', type=Path)
    p.add_argument('--rows', type=Path, default=HERE / 'pareto_rows.txt')
    args = p.parse_args(argv)
    for row, (config, overrides, start) in rows(args.rows).items():
        folder = args.out / row
        if (folder / 'config.json').is_file():
            continue
        cfg = load_config(HERE / 'configs' / f'{config}.yaml', overrides)
        model = build_model(cfg.model, NUM_CLASSES)
        dc = model_data_config(model, cfg.data)
        data_config = {k: dc[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct')}
        save_pretrained(model, folder, data_config=data_config,
                        pretrained_cfg=dict(data_config, num_classes=NUM_CLASSES))
        values = json.loads(json.dumps(cfg.to_dict()))
        values['init_from'] = start.get('init_from')
        values['model']['backbone_from'] = start.get('model.backbone_from')
        (folder / 'config.yaml').write_text(yaml.safe_dump(values, sort_keys=False))
        print(f'{row}: {config} {" ".join(overrides)} -> {folder}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
