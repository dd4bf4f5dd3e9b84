"""The model card's "Model details" table: every registered ``wae*`` model's parameters, MACs, input size and
front end, measured on the model as ``timm.create_model`` builds it (1000 classes, random weights).

    python recipes/model_table.py                        # prints the table
    python recipes/model_table.py --write MODEL_CARD.md  # also puts it between the card's table:models markers

MACs per image at the model's ``pretrained_cfg['input_size']`` and batch 1, counted by
``torch.utils.flop_counter.FlopCounterMode`` (``timm_wae.bench.count_macs``: MACs = FLOPs / 2).
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from doc_tables import write_table  # noqa: E402

FRONT_ENDS = {'wae': "the paper's learned WAE", 'wae2': 'learned, Haar start, 1 level',
              'wae4': 'learned, Haar start, 2 levels'}


def measure(name: str) -> Dict:
    import timm
    import torch

    import timm_wae  # noqa: F401 - registers the models
    from timm_wae.bench import count_macs
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    size = tuple(model.pretrained_cfg['input_size'])
    return {'model': name, 'backbone': model.model_args['backbone'], 'front_end': model.model_args['front_end'],
            'ih_fusion': model.model_args['ih_fusion'], 'input_size': size,
            'params_m': sum(p.numel() for p in model.parameters()) / 1e6, 'gmac': count_macs(model, size) / 1e9}


def table(rows: List[Dict]) -> str:
    lines = ['| model | backbone | front end | IH joins | input size | params (M) | GMACs |', '|' + '---|' * 7]
    for r in rows:
        c, h, w = r['input_size']
        lines.append(f"| `{r['model']}` | {r['backbone']} | `{r['front_end']}`: {FRONT_ENDS[r['front_end']]} "
                     f"| {'the first conv' if r['ih_fusion'] == 'stem' else 'a quarter-width branch'} "
                     f"| {c}x{h}x{w} | {r['params_m']:.2f} | {r['gmac']:.3f} |")
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    import timm

    import timm_wae  # noqa: F401
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--write', type=Path, help='the page whose table:models markers receive the table')
    args = p.parse_args(argv)
    names = [n for family in ('wae_*', 'wae2_*', 'wae4_*') for n in timm.list_models(family)]
    text = table([measure(n) for n in names])
    print(text)
    if args.write:
        write_table(args.write, 'models', text)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
