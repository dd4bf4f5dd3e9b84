"""The tables in docs/*.md that render a CSV are the report scripts' output, so a number lives in the CSV only:
each page's table equals what its script renders from the CSV today, and the marker mechanics refuse a page
without its markers instead of writing somewhere else."""
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _recipe(name: str):
    sys.path.insert(0, str(REPO / 'recipes'))
    spec = importlib.util.spec_from_file_location(name, REPO / 'recipes' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


doc_tables = _recipe('doc_tables')


@pytest.mark.parametrize('script, csv_name', [('report_pareto', 'pareto_imagenette.csv'),
                                              ('report_conversion', 'conversion_imagenette.csv')])
def test_each_study_page_shows_its_csv_as_the_report_script_renders_it(script, csv_name):
    module = _recipe(script)
    rendered = module.markdown(module.read_csv(REPO / 'docs' / csv_name))
    assert doc_tables.read_table(REPO / module.PAGE, module.TABLE) == rendered, \
        f'{module.PAGE} is stale: run python recipes/{script}.py --from-csv --page'


def test_the_pareto_page_shows_the_csv_numbers_unrounded_in_our_favour():
    module = _recipe('report_pareto')
    rows = {r['row']: r for r in module.read_csv(REPO / 'docs' / 'pareto_imagenette.csv')}
    table = doc_tables.read_table(REPO / module.PAGE, module.TABLE)
    line = next(x for x in table.splitlines() if x.startswith('| wae4_stem |'))
    r = rows['wae4_stem']
    assert f"{r['top1_err']:.2f} ± {r['top1_err_spread']:.2f}" in line
    assert f"| \N{MINUS SIGN}{-r['gain_vs_lowres']:.2f} |" in line and r['gain_vs_lowres'] < 0  # a loss shown as one
    assert not any(x.startswith('| ft_') for x in table.splitlines())  # the superseded conversions stay in the CSV


def test_the_from_csv_mode_rewrites_only_the_table_between_the_markers(tmp_path):
    module = _recipe('report_conversion')
    page = tmp_path / 'page.md'
    page.write_text('# title\n\n<!-- table:conversion -->\n| stale |\n<!-- /table -->\n\nafter <!-- /table -->\n')
    assert module.main(['--from-csv', '--csv', str(REPO / 'docs' / 'conversion_imagenette.csv'),
                        '--page', str(page)]) == 0
    text = page.read_text()
    assert '| stale |' not in text and '| wae2_e3 | c128 | wae2 | 128 | 3 | 2 |' in text
    assert text.startswith('# title\n\n<!-- table:conversion -->\n| row |') and text.endswith('\n\nafter <!-- /table -->\n')


def test_a_page_without_its_markers_is_refused_by_name(tmp_path):
    page = tmp_path / 'page.md'
    page.write_text('<!-- table:other -->\n<!-- /table -->\n')
    with pytest.raises(ValueError, match=r"page\.md: needs exactly one '<!-- table:pareto -->'"):
        doc_tables.write_table(page, 'pareto', '| x |')
    page.write_text('<!-- table:pareto -->\n| x |\n')
    with pytest.raises(ValueError, match='has no'):
        doc_tables.read_table(page, 'pareto')
