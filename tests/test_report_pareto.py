"""recipes/report_pareto.py on a tiny fake study: the CSV's columns and the numbers behind them."""
import csv
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _report():
    spec = importlib.util.spec_from_file_location('report_pareto', REPO / 'recipes' / 'report_pareto.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# run -> (model config, top-1 err, top-5 err, ms at batch 1, ms at batch 8, GMAC, input size)
RUNS = {
    'lowres64_s0': ({'type': 'timm'}, 30.0, 5.0, 5.0, 20.0, 0.15, 64),
    'lowres128_s0': ({'type': 'timm'}, 20.0, 3.0, 10.0, 60.0, 0.59, 128),
    'lowres128_s1': ({'type': 'timm'}, 21.0, 3.2, None, None, None, 128),
    'haar_s0': ({'type': 'wae', 'front_end': 'haar'}, 27.0, 4.0, 7.0, 30.0, 0.16, 128),
    'wae2_stem_s0': ({'type': 'wae', 'front_end': 'wae2', 'ih_fusion': 'stem'}, 22.0, 3.5, 6.0, 40.0, 0.19, 128),
    'wae2_stem_s1': ({'type': 'wae', 'front_end': 'wae2', 'ih_fusion': 'stem'}, 23.0, 3.7, None, None, None, 128),
    # another backbone, faster and better than every resnet18 row: compared with its own rows only
    'mnv3_lowres128_s0': ({'type': 'timm', 'backbone': 'mobilenetv3_large_100'}, 10.0, 1.0, 4.0, 25.0, 0.06, 128),
    # converted from a trained network: compared with each other only
    'ft_lowres64_s0': ({'type': 'timm', 'init': 'x'}, 28.0, 4.0, 5.0, 20.0, 0.15, 64),
    'ft_lowres96_s0': ({'type': 'timm', 'init': 'x'}, 24.0, 3.4, 7.0, 40.0, 0.33, 96),
    'ft_wae2_stem_s0': ({'type': 'wae', 'front_end': 'wae2', 'ih_fusion': 'stem', 'backbone_from': 'x'},
                        23.0, 3.4, 6.0, 30.0, 0.19, 128),
}


@pytest.fixture
def study(tmp_path):
    runs, measure = tmp_path / 'pareto', tmp_path / 'pareto' / 'measure'
    measure.mkdir(parents=True)
    results = []
    for run, (model, top1, top5, ms1, ms8, gmac, size) in RUNS.items():
        (runs / run).mkdir()
        model = dict(model)
        init = model.pop('init', None)
        (runs / run / 'config.yaml').write_text(yaml.safe_dump({'model': model, 'init_from': init,
                                                                'data': {'img_size': size}}))
        folder = f'{runs}/{run}/stage2/model'
        (measure / f'eval_{run}.json').write_text(json.dumps({'rows': [
            {'model': folder, 'noise_var': 0, 'top1_err': top1, 'top5_err': top5, 'count': 3925}]}))
        for batch, ms in ((1, ms1), (8, ms8)):
            if ms is not None:  # only seed 0 is timed
                results.append({'model': folder, 'batch_size': batch, 'dtype': 'fp32', 'channels_last': False,
                                'median_ms': ms, 'gmacs': gmac, 'params_m': 11.0, 'img_size': size})
    # the bench also times each WAE model's backbone by name: not a row of the study
    results.append({'model': 'resnet18', 'batch_size': 8, 'dtype': 'fp32', 'channels_last': False,
                    'median_ms': 1.0, 'gmacs': 0.6, 'params_m': 11.0, 'img_size': 128})
    (measure / 'bench.json').write_text(json.dumps({'results': results}))
    return runs


def test_csv_has_one_line_per_row_with_seed_means_spreads_and_the_comparison_to_the_lowres_curve(study, tmp_path):
    report = _report()
    csv_path, png, ledger = tmp_path / 'out.csv', tmp_path / 'out.png', tmp_path / 'runs.csv'
    assert report.main([str(study), '--csv', str(csv_path), '--png', str(png), '--ledger', str(ledger)]) == 0
    with csv_path.open() as f:
        reader = csv.DictReader(f)
        rows = {r['row']: r for r in reader}
    for column in ('row', 'kind', 'img_size', 'seeds', 'top1_err', 'top1_err_spread', 'top5_err', 'gmac',
                   'ms_b1', 'ms_b8', 'on_front', 'gain_vs_lowres', 'gain_vs_wavelet'):
        assert column in reader.fieldnames, column
    assert set(rows) == {'lowres64', 'lowres128', 'haar', 'wae2_stem', 'ft_lowres64', 'ft_lowres96', 'ft_wae2_stem',
                         'mnv3_lowres128'}
    assert rows['mnv3_lowres128']['backbone'] == 'mobilenetv3_large_100' and rows['haar']['backbone'] == 'resnet18'
    wae2, lowres128, haar = rows['wae2_stem'], rows['lowres128'], rows['haar']
    assert (wae2['kind'], wae2['ih_fusion'], wae2['seeds'], lowres128['kind'], haar['kind']) == \
        ('wae2', 'stem', '2', 'lowres', 'wavelet')
    assert float(wae2['top1_err']) == pytest.approx(22.5) and float(wae2['top1_err_spread']) == pytest.approx(0.5)
    assert float(lowres128['top5_err']) == pytest.approx(3.1)
    # the lowres curve through (20 ms, 30 %) and (60 ms, 20.5 %) at 40 ms: 25.25 %, so 2.75 points better
    assert float(wae2['lowres_err_at_ms_b8']) == pytest.approx(25.25)
    assert float(wae2['gain_vs_lowres']) == pytest.approx(2.75)
    assert float(haar['gain_vs_lowres']) == pytest.approx(30 - 2.375 - 27)
    assert wae2['gain_vs_wavelet'] == ''  # 40 ms is outside the wavelet curve (one point at 30 ms)
    assert rows['lowres128']['gain_vs_lowres'] == ''
    assert {r for r, v in rows.items() if v['on_front'] == 'True'} == {
        'lowres64', 'haar', 'wae2_stem', 'lowres128', 'ft_lowres64', 'ft_wae2_stem', 'mnv3_lowres128'}
    ft = rows['ft_wae2_stem']  # against the converted lowres curve: 26 % at 30 ms
    assert (ft['study'], rows['ft_lowres64']['study'], wae2['study']) == ('converted', 'converted', 'scratch')
    assert float(ft['lowres_err_at_ms_b8']) == pytest.approx(26.0) and float(ft['gain_vs_lowres']) == pytest.approx(3.0)
    assert png.stat().st_size > 10_000
    with ledger.open() as f:  # every run's errors, kept for the sessions after this one
        kept = {r['run']: r for r in csv.DictReader(f)}
    assert set(kept) == set(RUNS) and float(kept['wae2_stem_s1']['top1_err']) == 23.0
    assert kept['wae2_stem_s1']['source'].startswith('eval_wae2_stem_s1.json')


def test_runs_of_earlier_sessions_count_from_the_ledger_and_equal_accuracy_gives_the_speed_up(study, tmp_path):
    """A run whose folder and eval file are gone still counts through the ledger; an architecture folder
    (arch/<row>, untrained, timed in today's bench) stands for a row with no run folder. speedup_vs_lowres:
    the lowres curve's latency at the row's error over the row's own."""
    report = _report()
    (study / 'measure' / 'eval_wae2_stem_s1.json').unlink()
    ledger = tmp_path / 'runs.csv'
    ledger.write_text('run,top1_err,top5_err,source\nwae2_stem_s1,24.0,3.9,earlier session\n'
                      'wae4_stem_s0,26.0,4.5,earlier session\n')
    arch = study / 'arch' / 'wae4_stem'
    arch.mkdir(parents=True)
    (arch / 'config.yaml').write_text(yaml.safe_dump({'model': {'type': 'wae', 'front_end': 'wae4', 'ih_fusion': 'stem'},
                                                      'data': {'img_size': 128}}))
    bench = json.loads((study / 'measure' / 'bench.json').read_text())
    bench['results'] += [{'model': str(arch), 'batch_size': b, 'dtype': 'fp32', 'channels_last': False, 'median_ms': ms,
                          'gmacs': 0.05, 'params_m': 11.0, 'img_size': 128} for b, ms in ((1, 4.0), (8, 25.0))]
    (study / 'measure' / 'bench.json').write_text(json.dumps(bench))
    rows = {r['row']: r for r in report.collect(study, ledger)}
    assert rows['wae2_stem']['top1_err'] == pytest.approx(23.0) and rows['wae2_stem']['seeds'] == 2  # 22 (file), 24
    wae4 = rows['wae4_stem']
    assert (wae4['levels'], rows['wae2_stem']['levels'], wae4['seeds']) == (2, 1, 1)
    # lowres curve (20 ms, 30 %) - (60 ms, 20.5 %): 26 % at 20 + 40 * 4 / 9.5 ms; 23 % at 20 + 40 * 7 / 9.5 ms
    assert wae4['lowres_ms_at_err'] == pytest.approx(20 + 40 * 4 / 9.5)
    assert wae4['speedup_vs_lowres'] == pytest.approx((20 + 40 * 4 / 9.5) / 25.0)
    assert rows['wae2_stem']['speedup_vs_lowres'] == pytest.approx((20 + 40 * 7 / 9.5) / 40.0)
    assert rows['lowres128']['speedup_vs_lowres'] is None
    ledger.write_text('run,top1_err,top5_err,source\nwae2_stem_s1,10.0,1.0,earlier session\n')
    better = {r['row']: r for r in report.collect(study, ledger)}['wae2_stem']  # 16 %: below the whole curve
    assert better['speedup_vs_lowres'] is None and better['lowres_ms_at_err'] is None
    # the curve could reach 16 % only beyond its slowest point (60 ms): at least 60 / 40 faster, a bound
    assert better['speedup_vs_lowres_min'] == pytest.approx(60.0 / 40.0)
    assert rows['wae2_stem']['speedup_vs_lowres_min'] is None and wae4['speedup_vs_lowres_min'] is None


def test_a_ledger_run_recovered_without_its_top5_counts_for_top1_and_leaves_top5_to_the_other_seeds(study, tmp_path):
    """A run recovered from a note that gave only its top-1: its top-1 counts, the row's top-5 is the mean of
    the seeds that have one, and the ledger keeps the top-5 empty rather than inventing it."""
    report = _report()
    (study / 'measure' / 'eval_wae2_stem_s1.json').unlink()
    ledger = tmp_path / 'runs.csv'
    ledger.write_text('run,top1_err,top5_err,source\nwae2_stem_s1,24.0,,a note (top-1 only)\n')
    csv_path = tmp_path / 'out.csv'
    assert report.main([str(study), '--csv', str(csv_path), '--png', str(tmp_path / 'out.png'),
                        '--ledger', str(ledger)]) == 0
    with csv_path.open() as f:
        wae2 = next(r for r in csv.DictReader(f) if r['row'] == 'wae2_stem')
    assert (float(wae2['top1_err']), float(wae2['top5_err']), wae2['seeds']) == (23.0, 3.5, '2')  # 22 and 24; s0's 3.5
    with ledger.open() as f:
        kept = {r['run']: r for r in csv.DictReader(f)}
    assert kept['wae2_stem_s1']['top5_err'] == '' and kept['wae2_stem_s0']['top5_err'] == '3.5000'


def test_a_dominated_row_is_off_the_front(study, tmp_path):
    (study / 'measure' / 'eval_haar_s0.json').write_text(json.dumps({'rows': [
        {'model': f'{study}/haar_s0/stage2/model', 'noise_var': 0, 'top1_err': 31.0, 'top5_err': 4.0}]}))
    rows = {r['row']: r for r in _report().collect(study)}
    assert not rows['haar']['on_front'] and rows['wae2_stem']['on_front']
    assert rows['haar']['gain_vs_lowres'] == pytest.approx(27.625 - 31.0)


def test_a_rows_file_limits_the_table_to_its_runs_and_the_ledger_keeps_every_run(study, tmp_path):
    """A run taken out of the rows file (a superseded recipe) leaves the table, seed by seed, but its
    errors stay in the ledger."""
    table = tmp_path / 'rows.txt'
    table.write_text('# the study\nlowres64_s0 full_resolution data.img_size=64\n'
                     'lowres128_s0 full_resolution\nwae2_stem_s1 wae2_stem seed=1\n\nhaar_s0 wavelet_cnn\n')
    csv_path, ledger = tmp_path / 'out.csv', tmp_path / 'runs.csv'
    assert _report().main([str(study), '--csv', str(csv_path), '--png', str(tmp_path / 'out.png'), '--ledger',
                           str(ledger), '--rows', str(table)]) == 0
    with csv_path.open() as f:
        rows = {r['row']: r for r in csv.DictReader(f)}
    assert set(rows) == {'lowres64', 'lowres128', 'wae2_stem', 'haar'}
    assert (rows['lowres128']['seeds'], float(rows['lowres128']['top1_err'])) == ('1', 20.0)  # lowres128_s1 not listed
    assert (rows['wae2_stem']['seeds'], float(rows['wae2_stem']['top1_err'])) == ('1', 23.0)
    with ledger.open() as f:
        assert {r['run'] for r in csv.DictReader(f)} == set(RUNS)


def test_architecture_folders_time_every_row_at_its_size_and_mark_conversions(tmp_path):
    """recipes/pareto_architectures.py: one untrained folder per row (the first run's config), at the row's
    input size, with the config.yaml the report reads; a row that starts from a trained network stays
    marked as converted although the network itself is not needed for the timing."""
    spec = importlib.util.spec_from_file_location('pareto_architectures', REPO / 'recipes' / 'pareto_architectures.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = tmp_path / 'rows.txt'
    table.write_text('# comment\nlowres48_s0 full_resolution seed=0 data.img_size=48 model.backbone=test_resnet\n'
                     'lowres48_s1 full_resolution seed=1 data.img_size=48 model.backbone=test_resnet\n'
                     'ft_wae4_stem_s0 wae4_stem seed=0 model.backbone=test_resnet $CONVERT '
                     'model.backbone_from=$OUT/lowres128_s0/stage2/model\n')
    assert module.main([str(tmp_path / 'arch'), '--rows', str(table)]) == 0
    assert sorted(p.name for p in (tmp_path / 'arch').iterdir()) == ['ft_wae4_stem', 'lowres48']
    from timm_wae import load_model as create_model
    lowres, wae4 = (create_model(str(tmp_path / 'arch' / r)) for r in ('lowres48', 'ft_wae4_stem'))
    assert tuple(lowres.pretrained_cfg['input_size']) == (3, 48, 48) and wae4.pretrained_cfg['input_size'][-1] == 128
    assert wae4.model_args['front_end'] == 'wae4' and wae4.num_classes == 10
    report = _report()
    cfg = yaml.safe_load((tmp_path / 'arch' / 'ft_wae4_stem' / 'config.yaml').read_text())
    assert cfg['model']['backbone_from'] == '$OUT/lowres128_s0/stage2/model' and report.kind_of(cfg['model']) == 'wae4'


def test_conversion_report_compares_each_row_with_the_lowres_rows_of_its_own_series_and_budget(tmp_path):
    """recipes/report_conversion.py: budget_epochs from the row's config, gains against the lower-resolution
    rows of the same series fine-tuned with the same budget only, the c160 series against its teacher row,
    and each row's error before any fine-tune (the c128 series' kept from the CSV: its teacher is gone)."""
    spec = importlib.util.spec_from_file_location('report_conversion', REPO / 'recipes' / 'report_conversion.py')
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    runs, measure = tmp_path / 'conversion', tmp_path / 'conversion' / 'measure'
    measure.mkdir(parents=True)
    # row -> (kind, size, epochs, top-1 err, ms at batch 8)
    table = {'lowres64_e1': ('lowres', 64, 1, 30.0, 20.0), 'lowres96_e1': ('lowres', 96, 1, 24.0, 40.0),
             'wae2_e1': ('wae2', 128, 1, 25.0, 30.0),
             'lowres64_e3': ('lowres', 64, 3, 26.0, 20.0), 'lowres96_e3': ('lowres', 96, 3, 20.0, 40.0),
             'wae2_e3': ('wae2', 128, 3, 21.0, 30.0),
             'c160_teacher': ('lowres', 128, 12, 19.0, 60.0),
             'c160_lowres80_e3': ('lowres', 80, 3, 23.0, 30.0), 'c160_lowres96_e3': ('lowres', 96, 3, 21.0, 40.0),
             'c160_wae2_e3': ('wae2', 160, 3, 19.5, 34.0)}
    results = []
    for row, (kind, size, epochs, top1, ms8) in table.items():
        model = {'type': 'timm'} if kind == 'lowres' else {'type': 'wae', 'front_end': 'wae2', 'ih_fusion': 'stem'}
        (runs / 'arch' / row).mkdir(parents=True)
        (runs / 'arch' / row / 'config.yaml').write_text(yaml.safe_dump(
            {'model': dict(model, backbone_from='x'), 'init_from': None, 'stage2': {'epochs': epochs}}))
        (measure / f'eval_{row}_s0.json').write_text(json.dumps({'rows': [
            {'noise_var': 0, 'top1_err': top1, 'top5_err': 1.0, 'count': 3925}]}))
        (measure / f'start_c160_{kind}{size}.json').write_text(json.dumps({'top1_err': 50.0 + size / 10}))
        results += [{'model': str(runs / 'arch' / row), 'batch_size': b, 'dtype': 'fp32', 'channels_last': False,
                     'median_ms': ms8 / (8 // b), 'gmacs': 0.2, 'params_m': 11.0, 'img_size': size} for b in (1, 8)]
    (measure / 'bench.json').write_text(json.dumps({'results': results}))
    out = tmp_path / 'conversion.csv'
    out.write_text('row,start_err\nwae2_e3,37.5\nlowres64_e1,37.8\n')  # the c128 start errors measured back then
    assert report.main([str(runs), '--csv', str(out), '--png', str(tmp_path / 'c.png'), '--ledger',
                        str(tmp_path / 'ledger.csv'), '--scratch', str(tmp_path / 'none.csv')]) == 0
    with out.open() as f:
        reader = csv.DictReader(f)
        rows = {r['row']: r for r in reader}
    assert reader.fieldnames[:10] == ['row', 'series', 'kind', 'backbone', 'img_size', 'budget_epochs', 'seeds',
                                      'top1_err', 'top1_err_spread', 'ms_b8']
    # the 1-epoch lowres curve is 27 % at 30 ms: wae2_e1 is 2 points better; the 3-epoch one is 23 %
    assert float(rows['wae2_e1']['gain_vs_lowres']) == pytest.approx(2.0)
    assert float(rows['wae2_e3']['gain_vs_lowres']) == pytest.approx(2.0)
    # the 3-epoch curve reaches 21 % at 36.67 ms: 1.22x the row's 30 ms
    assert float(rows['wae2_e3']['speedup_vs_lowres']) == pytest.approx((20 + 20 * 5 / 6) / 30, abs=1e-4)
    assert (rows['wae2_e3']['start_err'], rows['lowres64_e1']['start_err'], rows['wae2_e1']['start_err']) == \
        ('37.5000', '37.8000', '')
    assert rows['lowres64_e1']['gain_vs_lowres'] == '' and (tmp_path / 'c.png').stat().st_size > 0
    # c160: against its own lowres rows (22.6 % at 34 ms, not the c128 rows') and its teacher
    c160 = rows['c160_wae2_e3']
    assert (c160['series'], rows['c160_teacher']['kind'], rows['wae2_e3']['series']) == ('c160', 'teacher', 'c128')
    assert float(c160['gain_vs_lowres']) == pytest.approx(23.0 - 2.0 * 4 / 10 - 19.5)
    assert float(c160['err_vs_teacher']) == pytest.approx(0.5) and float(c160['speedup_vs_teacher']) == pytest.approx(60 / 34, abs=1e-4)
    assert c160['start_err'] == '66.0000' and rows['c160_teacher']['start_err'] == ''
    assert rows['wae2_e3']['err_vs_teacher'] == '' and rows['c160_teacher']['gain_vs_lowres'] == ''
