"""Every timm family in both fusion modes: it runs, or the constructor refuses it with a ShrinkError.

One small model per family (recipes/backbone_table.py's FAMILIES), wrapped with random weights and run once
at the WAE model's pretrained_cfg input size. docs/backbones.md's table is that script's output: each row
here must say what the page says, so the table cannot go stale. Slow tier (about 2 s per model and mode on
an idle CPU, minutes in all).
"""
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location('backbone_table', ROOT / 'recipes' / 'backbone_table.py')
backbone_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(backbone_table)
from doc_tables import read_table  # noqa: E402 - recipes/ is on sys.path once backbone_table is loaded


def page_rows() -> dict:
    """model -> {'branch': bool, 'stem': bool} from docs/backbones.md's generated table."""
    table = read_table(backbone_table.PAGE, backbone_table.TABLE)
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) == 4 and re.fullmatch(r'[\w.]+', cells[1]) and cells[1] != 'model':
            rows[cells[1]] = {'branch': cells[2] == 'yes', 'stem': cells[3] == 'yes'}
    return rows


def test_the_page_table_lists_every_family_once_and_meets_the_coverage_targets():
    rows = page_rows()
    assert set(rows) == set(backbone_table.FAMILIES.values())
    assert len(backbone_table.FAMILIES) >= 30
    others = [m for f, m in backbone_table.FAMILIES.items() if f not in backbone_table.HARD_CASES]
    branch = sum(rows[m]['branch'] for m in others) / len(others)
    stem = sum(rows[m]['stem'] for m in others) / len(others)
    assert branch >= 0.75 and stem >= 0.90, (branch, stem)


@pytest.mark.slow
@pytest.mark.parametrize('mode', sorted(backbone_table.MODES))
@pytest.mark.parametrize('name', sorted(backbone_table.FAMILIES.values()))
def test_every_family_runs_or_is_refused_at_construction(name, mode):
    status, detail = backbone_table.try_backbone(name, mode)
    assert status in ('runs', 'refused'), detail  # never another exception, a failure at the first forward, a bad shape
    expected = page_rows()[name][mode]
    assert (status == 'runs') == expected, f'docs/backbones.md says {name} {"runs" if expected else "is refused"} in {mode} ' \
                                           f'mode; now: {status}: {detail}'
