"""The ``timm-wae`` console command, run as a real process (``python -m timm_wae_cli``) on tiny
models and a tiny generated ImageFolder; the noise pipeline of ``timm_wae.evaluate`` and the user
error matrix are also checked in-process (``cli.main(argv)``), which is the same code minus the
interpreter start-up."""
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.models import save_for_hf
from torch import nn

import timm_wae  # noqa: F401  (registers wae_*)
import timm_wae_cli as cli
from timm_wae.evaluate import eval_transform, evaluate

CLASSES = ('ant', 'bee', 'cat')
PER_CLASS = 4


def run_cli(*args, env=None, timeout=180):
    """The console entry in a fresh interpreter; offline so that nothing waits on the network."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'TIMM_WAE_'))}
    # one thread: tiny models gain nothing from two, and OpenMP threads spin badly on a busy machine
    full_env.update(HF_HUB_OFFLINE='1', HF_HUB_DISABLE_PROGRESS_BARS='1', TQDM_DISABLE='1', OMP_NUM_THREADS='1')
    full_env.update(env or {})
    return subprocess.run([sys.executable, '-m', 'timm_wae_cli', *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def ok(proc):
    assert proc.returncode == 0, f'exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}'
    return proc


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """The in-process tests run tiny models too: one thread, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_images(folder: Path, n: int, seed: int, size=(40, 52)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        # smooth-ish colour images of varying size and aspect: exercises resize + centre crop
        h, w = size[0] + 3 * i, size[1] - 2 * i
        base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        img.save(folder / f'img{i}.jpg', quality=90)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """root/ (3 classes x 4 JPEGs), one_class/ (only the first class), broken/, empty_class/, images."""
    root = tmp_path_factory.mktemp('data')
    for c, name in enumerate(CLASSES):
        _write_images(root / 'split' / name, PER_CLASS, seed=c)
    _write_images(root / 'one_class' / CLASSES[0], PER_CLASS, seed=10)
    _write_images(root / 'broken' / 'ant', 2, seed=11)
    (root / 'broken' / 'ant' / 'zz_corrupt.jpg').write_bytes(b'this is not a JPEG')
    _write_images(root / 'empty_class' / 'ant', 2, seed=12)
    (root / 'empty_class' / 'bee').mkdir()
    (root / 'empty_class' / 'bee' / 'notes.txt').write_text('no images here')
    return root


def _constant_model(cls: int, num_classes: int = len(CLASSES)) -> nn.Module:
    """A resnet18 whose classifier ignores its input and always ranks ``cls`` first."""
    model = timm.create_model('resnet18', num_classes=num_classes)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.arange(num_classes, 0, -1).float().roll(cls))  # cls gets the largest
    return model


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    """Hub-layout folders (config.json + model.safetensors) of a constant classifier and two WAE baselines,
    and a bare weights file of another constant classifier."""
    root = tmp_path_factory.mktemp('models')
    save_for_hf(_constant_model(0), root / 'const0', safe_serialization=True)
    from safetensors.torch import save_file
    save_file(_constant_model(2).state_dict(), str(root / 'const2.safetensors'))
    save_for_hf(timm.create_model('wae', backbone='resnet18', front_end='dwt97', num_classes=3),
                root / 'wae_dwt', safe_serialization=True)
    save_for_hf(timm.create_model('wae', backbone='resnet18', front_end='resize', use_ih=False, num_classes=3),
                root / 'wae_resize', safe_serialization=True)
    return root


# ------------------------------------------------------------------------------------------- help
def test_help_lists_every_command_with_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(['--help'])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ('bench', 'eval', 'visualize', 'push', 'train'):
        assert command in out
        assert f'timm-wae {command} ' in out, f'no example for {command}'
    assert 'examples:' in out


@pytest.mark.parametrize('argv', [['--help'], ['--version'], ['eval', '--help'], ['bench', 'x', '--batch-sizes', '0'],
                                  ['frobnicate']])
def test_help_version_and_argument_errors_do_not_import_torch(argv):
    """The light door: the parser answers before anything imports torch (or timm_wae)."""
    code = ('import sys, timm_wae_cli\n'
            'try:\n    timm_wae_cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n'
            "print(sorted(m for m in ('torch', 'timm', 'timm_wae') if m in sys.modules))")
    proc = subprocess.run([sys.executable, '-c', code, *argv], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == '[]', proc.stdout + proc.stderr


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(['--version'])
    assert capsys.readouterr().out.strip() == f'timm-wae {timm_wae.__version__}'


# ------------------------------------------------------------------------------------------- bench
@pytest.mark.slow
def test_bench_speedup_comes_from_the_two_medians(tmp_path):
    out = tmp_path / 'bench.json'
    proc = ok(run_cli('bench', 'wae_resnet18', 'resnet18', '--img-size', 64, '--batch-sizes', '1,2',
                      '--dtypes', 'fp32,bf16', '--channels-last', 'both', '--device', 'cpu', '--threads', 1,
                      '--repeats', 2, '--warmup', 1, '--json', out))
    report = json.loads(out.read_text())
    results = report['results']
    settings = {(r['batch_size'], r['dtype'], r['channels_last']) for r in results}
    assert settings == {(b, d, c) for b in (1, 2) for d in ('fp32', 'bf16') for c in (False, True)}
    assert len(results) == 2 * len(settings)
    for setting in settings:
        rows = {r['model']: r for r in results if (r['batch_size'], r['dtype'], r['channels_last']) == setting}
        wae, base = rows['wae_resnet18'], rows['resnet18']
        assert wae['baseline'] == 'resnet18' and base['baseline'] is None and base['speedup'] is None
        assert wae['speedup'] == pytest.approx(base['median_ms'] / wae['median_ms'], rel=1e-9)
        for r in (wae, base):
            assert 0 < r['median_ms'] <= r['p90_ms']
            assert r['img_per_s'] == pytest.approx(r['batch_size'] * 1e3 / r['median_ms'])
            assert r['img_size'] == 64 and r['threads'] == 1 and r['repeats'] == 2
        # MACs are counted by torch's flop counter, not looked up: the WAE model must need fewer
        assert 0 < wae['gmacs'] < base['gmacs']
        assert wae['params_m'] > base['params_m'] > 0  # the IH branch and the fusion head add parameters
        assert f"{wae['speedup']:.2f}x" in proc.stdout  # the Markdown table shows the same number
    assert proc.stdout.lstrip().startswith('| model |')


def _scripted_timings(monkeypatch, ms, other_cores):
    """The bench's clock and its other-processes meter, scripted: each timed call (still made) takes the next
    of ``ms``, and other processes kept ``other_cores`` cores busy."""
    import timm_wae.bench as bench
    clock = iter(ms)

    def timer(device):
        def run(fn):
            fn()
            return next(clock)
        return run

    class Others:
        cores = other_cores

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(bench, '_timer', timer)
    monkeypatch.setattr(bench, 'OtherProcesses', Others)


def test_json_to_stdout_is_json_alone_and_busy_timings_are_flagged(capsys, monkeypatch):
    argv = ['bench', 'test_resnet', '--img-size', '32', '--batch-sizes', '1', '--threads', '1',
            '--repeats', '3', '--warmup', '0', '--json', '-', '-q']
    reports = {}
    for case, ms, other_cores in (('clean', [10., 10.5, 11.], 0.02), ('busy', [10., 10., 30.], 0.9)):
        _scripted_timings(monkeypatch, ms, other_cores)
        assert cli.main(argv) == 0
        captured = capsys.readouterr()
        report = reports[case] = json.loads(captured.out)  # nothing but the JSON on stdout
        assert report['command'] == 'bench' and '| model |' in captured.err
        assert isinstance(report['warnings'], list)
        row, = report['results']
        assert (row['median_ms'], row['p90_ms'], row['other_cores']) == (ms[1], ms[2], other_cores)  # scripted
        assert ('cannot be trusted' in captured.err) == (case == 'busy'), captured.err
    assert reports['clean']['warnings'] == []
    spread, shared = reports['busy']['warnings']
    assert '1 of 1 timings spread: p90/median up to 3.00 (test_resnet, batch 1)' in spread
    assert 'other processes kept up to 0.90 cores busy' in shared


def test_trust_warnings_name_a_spread_or_a_busy_machine():
    from timm_wae.bench import BenchResult, trust_warnings
    steady = BenchResult('m', None, 'cpu', 'fp32', False, 8, 10.0, 11.0, 800., 1., 1., threads=2, other_cores=0.02)
    jumpy = BenchResult('n', None, 'cpu', 'fp32', False, 1, 10.0, 19.0, 100., 1., 1., threads=2)
    assert trust_warnings([steady]) == []
    assert 'p90/median up to 1.90 (n, batch 1)' in trust_warnings([steady, jumpy])[0]
    shared = dataclasses.replace(steady, other_cores=0.9)
    busy = trust_warnings([steady, shared])
    assert len(busy) == 1 and 'other processes kept up to 0.90 cores busy' in busy[0]


def test_other_processes_counts_another_process_and_not_this_one():
    """A busy child process counts; this process's own busy loop does not (the bench's own work,
    e.g. compiling before the timing, must not make it distrust its ratios). Relative to what the
    machine's other processes do meanwhile, so that it holds on a busy machine too."""
    import resource

    from timm_wae.bench import OtherProcesses
    with OtherProcesses() as background:
        time.sleep(1.0)
    with OtherProcesses() as own:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            pass
    assert own.cores < background.cores + 0.5, (own.cores, background.cores)
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    with OtherProcesses() as other:
        subprocess.run([sys.executable, '-c', 'import time\nend = time.monotonic() + 1.0\n'
                                              'while time.monotonic() < end: pass'], check=True)
    after, seconds = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic() - t0
    child = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / seconds
    assert child > 0.3 and other.cores > child - 0.15, (other.cores, child)


# ------------------------------------------------------------------------------------------- eval
@pytest.mark.slow
def test_eval_noise_levels_on_baselines(data, models, tmp_path):
    out = tmp_path / 'eval.json'
    specs = ['resnet18', 'wae_resnet18', models / 'wae_dwt', models / 'wae_resize']
    ok(run_cli('eval', *specs, '--data', data / 'split', '--noise', '0,0.1', '--img-size', 64,
               '--batch-size', 5, '--workers', 1, '--no-pretrained', '--seed', 3, '--json', out))
    rows = json.loads(out.read_text())['rows']
    assert [r['model'] for r in rows] == [str(s) for s in specs for _ in range(2)]
    for r in rows:
        assert r['count'] == len(CLASSES) * PER_CLASS
        assert 0 <= r['top5_err'] <= r['top1_err'] <= 100
        assert r['top1_err'] == pytest.approx(100 * (1 - r['top1_correct'] / r['count']))
        assert r['top5_err'] == pytest.approx(100 * (1 - r['top5_correct'] / r['count']))
        assert r['noise_std'] == pytest.approx(math.sqrt(r['noise_var']))
    assert [r['noise_var'] for r in rows[:2]] == [0.0, 0.1]


def test_eval_constant_classifier_gives_exact_errors(data, models, tmp_path):
    """A model that always answers class 0: 0% error on a class-0-only folder, (1 - 1/3) on the split;
    the same folder with --checkpoint of an always-class-2 model: 100% error."""
    runs = {
        'one': ('eval', models / 'const0', '--data', data / 'one_class'),
        'split': ('eval', models / 'const0', '--data', data / 'split', '--max-per-class', 3),
        'wrong': ('eval', models / 'const0', '--checkpoint', models / 'const2.safetensors', '--data',
                  data / 'one_class'),
    }
    res = {}
    for key, args in runs.items():
        argv = [*args, '--img-size', 32, '--workers', 0, '--json', tmp_path / f'{key}.json']
        if key == 'split':  # in-process: same code, no interpreter start-up
            assert cli.main([str(a) for a in argv + ['-q']]) == 0
        else:
            ok(run_cli(*argv))
        (res[key],) = json.loads((tmp_path / f'{key}.json').read_text())['rows']
    assert res['one']['count'] == PER_CLASS
    assert res['one']['top1_err'] == 0.0 and res['one']['top1_correct'] == PER_CLASS
    assert res['split']['count'] == 3 * len(CLASSES)  # --max-per-class 3
    assert res['split']['top1_correct'] == 3  # exactly the class-0 images
    assert res['split']['top1_err'] == pytest.approx(100 * (1 - 1 / len(CLASSES)))
    assert res['split']['top5_err'] == 0.0  # with 3 classes, the top "5" holds every class
    assert res['wrong']['top1_err'] == 100.0


@pytest.mark.slow
def test_eval_maps_wordnet_folders_to_imagenet_indices(tmp_path):
    """Imagenette-style folders (WordNet ids) are scored against an ImageNet model's own indices."""
    from timm.data import ImageNetInfo
    synsets = ImageNetInfo('imagenet-1k').label_names()
    target = 217  # any index but 0: the identity mapping would score the single folder as class 0
    _write_images(tmp_path / 'val' / synsets[target], 3, seed=5)
    rows = evaluate(_constant_model(target, num_classes=1000), tmp_path / 'val', img_size=32, workers=0,
                    progress=False)
    assert rows[0]['label_map'] == 'ImageNet WordNet ids' and rows[0]['top1_err'] == 0.0
    rows = evaluate(_constant_model(0, num_classes=1000), tmp_path / 'val', img_size=32, workers=0, progress=False)
    assert rows[0]['top1_err'] == 100.0


def test_eval_maps_folders_by_the_models_label_names(data):
    """A model that records its classes (as the recipes do) is scored by name, not by folder position."""
    model = _constant_model(1)
    model.pretrained_cfg = dict(model.pretrained_cfg, label_names=['zebra', CLASSES[0], 'yak'])
    (row,) = evaluate(model, data / 'one_class', img_size=32, workers=0, progress=False)
    assert row['label_map'] == 'label names' and row['top1_err'] == 0.0
    model.pretrained_cfg['label_names'] = ['zebra', 'xerus', 'yak']  # no match: the sorted index, class 0
    (row,) = evaluate(model, data / 'one_class', img_size=32, workers=0, progress=False)
    assert row['label_map'] == 'sorted folder index' and row['top1_err'] == 100.0


class _Probe(nn.Module):
    """Records what the model sees; answers class 0."""

    def __init__(self):
        super().__init__()
        self.num_classes = 3
        self.pretrained_cfg = dict(input_size=(3, 32, 32), interpolation='bilinear', crop_pct=0.875,
                                   crop_mode='center', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        self.seen = []
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        self.seen.append(x.clone())
        logits = torch.zeros(x.shape[0], 3)
        logits[:, 0] = 1
        return logits


def _seen(data_root, **kwargs):
    probe = _Probe()
    evaluate(probe, data_root, progress=False, workers=0, **kwargs)
    mean = torch.tensor(probe.pretrained_cfg['mean']).view(1, 3, 1, 1)
    std = torch.tensor(probe.pretrained_cfg['std']).view(1, 3, 1, 1)
    return probe, [x * std + mean for x in probe.seen]  # back to the [0, 1] scale


def test_eval_noise_is_gaussian_of_the_given_variance_and_reproducible(data):
    root = data / 'split'
    levels = (0.0, 0.02, 0.1)
    probe, seen = _seen(root, noise=levels, clamp=False, batch_size=5, seed=7)
    n_batches = math.ceil(len(CLASSES) * PER_CLASS / 5)
    assert len(seen) == n_batches * len(levels)  # every batch at every level
    clean = torch.cat(seen[0::3])
    # the clean input is the model's own normalised eval transform of the image
    first = Image.open(sorted((root / CLASSES[0]).iterdir())[0]).convert('RGB')
    reference = timm.data.create_transform(**timm.data.resolve_model_data_config(probe), is_training=False)(first)
    assert torch.allclose(probe.seen[0][0], reference, atol=1e-5)
    assert clean.min() >= 0 and clean.max() <= 1
    for j, var in enumerate(levels[1:], start=1):
        diff = torch.cat(seen[j::3]) - clean
        assert diff.mean().abs() < 0.02
        assert diff.std().item() == pytest.approx(math.sqrt(var), rel=0.03)
    # the same field scaled for every level, fixed by the seed and the image, not by the batching
    d1, d2 = torch.cat(seen[1::3]) - clean, torch.cat(seen[2::3]) - clean
    assert torch.allclose(d1 / math.sqrt(0.02), d2 / math.sqrt(0.1), atol=1e-3)
    _, again = _seen(root, noise=(0.1,), clamp=False, batch_size=12, seed=7)
    assert torch.allclose(again[0], torch.cat(seen[2::3]), atol=1e-5)
    _, other = _seen(root, noise=(0.1,), clamp=False, batch_size=12, seed=8)
    assert not torch.allclose(other[0], again[0], atol=1e-2)
    _, clamped = _seen(root, noise=(0.1,), clamp=True, batch_size=12, seed=7)
    assert clamped[0].min() >= -1e-5 and clamped[0].max() <= 1 + 1e-5
    assert torch.allclose(clamped[0], again[0].clamp(0, 1), atol=1e-5)


def test_eval_transform_gives_floats_in_unit_range(data):
    cfg = timm.data.resolve_model_data_config(timm.create_model('resnet18'))
    x = eval_transform(dict(cfg, input_size=(3, 48, 48)))(Image.open(next((data / 'split' / 'ant').iterdir())))
    assert x.dtype == torch.float32 and x.shape == (3, 48, 48)
    assert 0 <= x.min() < x.max() <= 1


# ------------------------------------------------------------------------------------------- visualize
@pytest.mark.slow
def test_visualize_writes_pngs_with_energy_and_psnr(data, tmp_path):
    images = [data / 'split' / 'ant' / 'img0.jpg', data / 'split' / 'bee' / 'img1.jpg']
    out = tmp_path / 'figs'
    ok(run_cli('visualize', 'wae_resnet18', '--no-pretrained', '--images', *images, '--out', out, '--compare',
               '--img-size', 64, '--json', tmp_path / 'vis.json'))
    rows = json.loads((tmp_path / 'vis.json').read_text())['rows']
    assert len(rows) == 2 and len({r['file'] for r in rows}) == 2
    for r in rows:
        with Image.open(r['file']) as png:
            assert png.format == 'PNG' and png.width > png.height > 0  # one row of six panels
        assert 0 < r['energy_share_ih'] < 1 and 0 < r['dwt_energy_share'] < 1
        assert math.isfinite(r['psnr_db'])


@pytest.mark.slow
def test_visualize_dwt_front_end_reconstructs_exactly_in_one_grid(data, models, tmp_path):
    """The 'dwt97' front end's IL/IH are the 9/7 DWT of the same input and its inverse is exact, so the
    figure's PSNR must be very high and the IH energy share equal to --compare's DWT detail share."""
    images = [data / 'split' / 'ant' / 'img0.jpg', data / 'split' / 'cat' / 'img2.jpg']
    png = tmp_path / 'grid.png'
    ok(run_cli('visualize', models / 'wae_dwt', '--images', *images, '--out', png, '--compare',
               '--img-size', 64, '--json', tmp_path / 'vis.json'))
    rows = json.loads((tmp_path / 'vis.json').read_text())['rows']
    assert {r['file'] for r in rows} == {str(png)}
    with Image.open(png) as im:
        assert im.format == 'PNG' and im.height > 0 and im.width > 0
    for r in rows:
        assert r['psnr_db'] > 60
        assert r['energy_share_ih'] == pytest.approx(r['dwt_energy_share'], rel=1e-4)


# ------------------------------------------------------------------------------------------- push / train
@pytest.mark.slow
def test_push_uploads_a_folder_to_a_hub(models, tmp_path, hub_server):
    proc = ok(run_cli('push', models / 'const0', 'testorg/const0', '--message', 'first upload',
                      env={'HF_ENDPOINT': hub_server.url, 'HF_HUB_OFFLINE': '0', 'HF_HOME': str(tmp_path / 'hf'),
                           'HF_TOKEN': 'hf_dummy', 'HF_HUB_DISABLE_XET': '1'}))
    stored = hub_server.repo_dir('testorg/const0')
    assert (stored / 'model.safetensors').read_bytes() == (models / 'const0' / 'model.safetensors').read_bytes()
    assert 'testorg/const0' in proc.stdout


@pytest.mark.slow
def test_train_launches_the_recipe_through_accelerate(tmp_path):
    recipes = tmp_path / 'recipes'
    (recipes / 'configs').mkdir(parents=True)
    (recipes / 'train.py').write_text(
        'import json, os, sys\nif __name__ == "__main__":\n'
        '    open(os.environ["ARGV_OUT"], "w").write(json.dumps(sys.argv[1:]))\n')
    (recipes / 'configs' / 'tiny.yaml').write_text('epochs: 1\n')
    argv_out = tmp_path / 'argv.json'
    ok(run_cli('train', 'tiny', 'epochs=2', 'model=wae_resnet18',
               env={'TIMM_WAE_RECIPES': str(recipes), 'ARGV_OUT': str(argv_out)}))
    assert json.loads(argv_out.read_text()) == [str(recipes / 'configs' / 'tiny.yaml'), 'epochs=2', 'model=wae_resnet18']


def test_convert_is_the_conversion_recipe_with_the_network_as_backbone_and_teacher(tmp_path, data, capsys, monkeypatch):
    """`timm-wae convert NETWORK`: the network is both the model to convert and the teacher, paths as the
    user meant them (the recipe reads relative paths from the repository's root); a network that is
    neither a path nor a timm name is refused before any launch."""
    monkeypatch.chdir(tmp_path)
    net, images = tmp_path / 'net', tmp_path / 'images'
    net.mkdir()
    images.mkdir()
    for split in ('train', 'val'):
        (images / split).symlink_to(data / 'split')
    data = images
    assert cli.main(['convert', 'net', '--data', str(data), '--output-dir', 'out', '--dry-run', 'stage2.epochs=1']) == 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith('accelerate launch') and 'recipes/configs/convert.yaml' in line
    for part in (f'model.backbone_from={net}', f'distill.teacher={net}', f'data.root={data}',
                 f'output_dir={tmp_path / "out"}', 'stage2.epochs=1'):
        assert f' {part}' in line, part
    assert cli.main(['convert', 'resnet50.a1_in1k', '--data', str(data), '--output-dir', 'out', '--dry-run']) == 0
    err = capsys.readouterr().err
    assert 'model.backbone_from=resnet50.a1_in1k distill.teacher=resnet50.a1_in1k' in err
    assert 'data.img_size' not in err  # the recipe's size unless asked
    assert cli.main(['convert', 'net', '--data', str(data), '--output-dir', 'out', '--img-size', '160', '--dry-run']) == 0
    assert ' data.img_size=160' in capsys.readouterr().err.strip().splitlines()[-1]
    assert cli.main(['convert', 'no_such_net', '--data', str(data), '--output-dir', 'out', '--dry-run']) == 2
    assert "model.backbone_from='no_such_net' does not exist, and is not a timm model name" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- user errors
@pytest.mark.slow
@pytest.mark.parametrize('case', ['missing_root', 'unknown_model', 'unreadable_image', 'train_missing_root'])
def test_user_errors_exit_2_without_traceback_as_a_process(case, data, tmp_path):
    args, expected = {
        'train_missing_root': (('train', 'smoke', f'data.root={data / "nowhere"}', f'output_dir={tmp_path / "run"}'),
                               ['smoke.yaml', 'nowhere/train', 'does not exist']),
        'missing_root': (('eval', 'resnet18', '--no-pretrained', '--data', data / 'nowhere'), ['nowhere', 'does not exist']),
        'unknown_model': (('bench', 'wae_resnet_nope', '--img-size', 32), ["unknown model 'wae_resnet_nope'",
                                                                           "timm.list_models('wae_*')"]),
        'unreadable_image': (('eval', 'resnet18', '--no-pretrained', '--data', data / 'broken', '--img-size', 32,
                              '--workers', 1), ['cannot read image', 'zz_corrupt.jpg']),
    }[case]
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert 'Traceback' not in proc.stderr
    assert 'timm-wae: error:' in proc.stderr
    for text in expected:
        assert text in proc.stderr


def _errors(tmp_path, data, models):
    no_weights = tmp_path / 'no_weights'
    no_weights.mkdir()
    (no_weights / 'config.json').write_text('{"architecture": "resnet18", "num_classes": 3}')
    img = data / 'split' / 'ant' / 'img0.jpg'
    text_file = tmp_path / 'notes.txt'
    text_file.write_text('not weights\n')
    onnx_file = tmp_path / 'model.int8.onnx'
    onnx_file.write_bytes(b'not read')
    bad_config = tmp_path / 'bad_config'
    bad_config.mkdir()
    (bad_config / 'config.json').write_text('{"architecture": ')
    return {
        'checkpoint of another class count': (
            ['eval', 'resnet18', '--no-pretrained', '--checkpoint', models / 'const2.safetensors', '--data',
             data / 'split'], ['const2.safetensors', 'pass --num-classes']),
        'eval empty class folder': (['eval', 'resnet18', '--no-pretrained', '--data', data / 'empty_class'],
                                    ["empty_class/bee'", 'no images']),
        'visualize missing data-free model folder': (['visualize', tmp_path / 'gone', '--images', img],
                                                     ['does not exist']),
        'eval unknown model': (['eval', 'resnt18', '--data', data / 'split'], ["unknown model 'resnt18'", 'resnet18']),
        'eval unknown tag': (['eval', 'resnet18.nope', '--data', data / 'split'], ["tag 'nope'"]),
        'eval missing folder': (['eval', tmp_path / 'gone' / 'model', '--data', data / 'split'], ['does not exist']),
        'eval weights missing': (['eval', no_weights, '--data', data / 'split', '--img-size', 32],
                                 ['model.safetensors']),
        'eval classes': (['eval', 'resnet18', '--no-pretrained', '--num-classes', 2, '--data', data / 'split',
                          '--img-size', 32, '--workers', 0, '-q'], ['3 classes', '2 outputs']),
        'eval missing checkpoint': (['eval', 'resnet18', '--checkpoint', tmp_path / 'x.pth', '--data',
                                     data / 'split'], ['x.pth', 'does not exist']),
        'eval wrong checkpoint': (['eval', 'resnet34', '--checkpoint', models / 'const2.safetensors', '--data',
                                   data / 'split'], ['const2.safetensors', 'do not fit']),
        'bench bad device': (['bench', 'resnet18', '--device', 'tpu'], ['tpu']),
        'visualize missing image': (['visualize', 'wae_resnet18', '--no-pretrained', '--images', tmp_path / 'no.jpg'],
                                    ['no.jpg', 'does not exist']),
        'visualize unreadable image': (['visualize', 'wae_resnet18', '--no-pretrained', '--images',
                                        data / 'broken' / 'ant' / 'zz_corrupt.jpg'], ['cannot read image']),
        'visualize plain model': (['visualize', 'resnet18', '--no-pretrained', '--images', img,
                                   '--out', tmp_path / 'v'], ['no WAE front end']),
        'visualize unknown model': (['visualize', 'wae_nothing', '--images', img], ["unknown model 'wae_nothing'"]),
        'push missing folder': (['push', tmp_path / 'nofolder', 'me/x'], ['nofolder', 'does not exist']),
        'push no weights': (['push', no_weights, 'me/x'], ['model.safetensors']),
        'push bad repo id': (['push', models / 'const0', 'no-owner'], ['owner/name']),
        'train no recipes': (['train', 'x.yaml'], ['recipes/train.py not found']),
        'eval text file as checkpoint': (['eval', 'resnet18', '--checkpoint', text_file, '--data', data / 'split'],
                                         ['notes.txt', 'not a safetensors file or a torch checkpoint']),
        'eval malformed config.json': (['eval', bad_config, '--data', data / 'split'],
                                       [str(bad_config / 'config.json'), 'not valid JSON']),
        'eval an ONNX file as the model': (['eval', onnx_file, '--data', data / 'split'],
                                           ["model.int8.onnx' is an ONNX file", '--paths onnx,int8']),
        'eval an ONNX file as the checkpoint': (['eval', 'resnet18', '--checkpoint', onnx_file, '--data', data / 'split'],
                                                ["model.int8.onnx' is an ONNX file", 'OnnxRuntimeModel']),
        'bench int8 without calibration images': (['bench', 'wae2_resnet18', '--paths', 'eager,int8'],
                                                   ['--paths int8 needs calibration images', '--calib-data DIR']),
        'bench int8 calibration folder without images': (
            ['bench', 'wae2_resnet18', '--paths', 'int8', '--calib-data', data / 'empty_class'],
            ['--calib-data', "empty_class/bee'", 'no images']),
    }


def test_user_error_matrix(tmp_path, data, models, capsys, monkeypatch):
    """Every user error: status 2 and a message naming the problem (in-process: no interpreter start-up)."""
    # no case reaches the Hub; HF_HUB_OFFLINE set here would come too late anyway (huggingface_hub read it
    # at import): the offline message is checked in a process, test_offline_without_a_cached_copy_says_so_as_a_process
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('TIMM_WAE_RECIPES', str(tmp_path / 'no_recipes_here'))
    monkeypatch.delenv('TIMM_WAE_DEBUG', raising=False)
    failures = []
    for name, (argv, expected) in _errors(tmp_path, data, models).items():
        status = cli.main([str(a) for a in argv])
        err = capsys.readouterr().err
        missing = [t for t in expected if t not in err]
        if status != 2 or 'timm-wae: error:' not in err or missing:
            failures.append(f'{name}: status {status}, missing {missing} in:\n{err}')
    assert not failures, '\n'.join(failures)


@pytest.mark.slow
@pytest.mark.parametrize('spec, what', [
    ('wae_resnet18.imagenette', r'wae_resnet18\.imagenette'),
    ('hf-hub:timm-wae/wae_resnet18.imagenette', r'timm-wae/wae_resnet18\.imagenette')])
def test_offline_without_a_cached_copy_says_so_as_a_process(spec, what, data, tmp_path):
    """HF_HUB_OFFLINE is read when huggingface_hub is imported, so it is set before the process starts (with an
    empty HF_HOME): loading the Hub's weights for a tag and for an hf-hub: id fails, naming the tag, saying that
    offline is set and that the Hub was not asked (not that it could not be reached)."""
    hf_home = tmp_path / 'hf'
    proc = run_cli('eval', spec, '--data', data / 'split', '--img-size', 32, env={'HF_HOME': str(hf_home)}, timeout=120)
    assert proc.returncode == 2, f'stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}'
    assert 'Traceback' not in proc.stderr
    message = (what + r' is not in the local Hugging Face cache \(.+\) and HF_HUB_OFFLINE is set, so the Hub was '
               r'not asked whether weights are published for it: unset HF_HUB_OFFLINE to download them, or to use a '
               r'local file instead')
    assert re.search(message, proc.stderr) and 'could not reach' not in proc.stderr, proc.stderr
    for text in (f"timm-wae: error: could not load model '{spec}'",
                 "pretrained_cfg_overlay=dict(file='path/to/model.safetensors')", '--no-pretrained'):
        assert text in proc.stderr, proc.stderr
    assert not list(hf_home.rglob('*.safetensors'))  # nothing downloaded


def test_argument_errors_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(['bench', 'resnet18', '--batch-sizes', '0,x'])
    assert exc.value.code == 2
    assert '--batch-sizes' in capsys.readouterr().err


@pytest.mark.slow
def test_bench_times_deployed_forms_and_the_backbone_at_equal_macs(data, tmp_path, capsys):
    out = tmp_path / 'bench.json'
    assert cli.main(['bench', 'wae2_resnet18', '--img-size', '64', '--batch-sizes', '2', '--threads', '1',
                     '--repeats', '2', '--warmup', '1', '--paths', 'eager,reparam,onnx,int8', '--same-macs', '-q',
                     '--calib-data', str(data / 'split'), '--calib-images', '4', '--json', str(out)]) == 0
    rows = {r['model']: r for r in json.loads(out.read_text())['results']}
    # wae2_resnet18 costs what resnet18 costs at about 34 px: its same-MACs baseline is resnet18 at 32 px
    forms = ('', ' [reparam]', ' [onnx]', ' [int8]')
    assert set(rows) == {f'{m}{form}' for m in ('wae2_resnet18', 'resnet18', 'resnet18 @32') for form in forms}
    for form in forms:
        wae = rows[f'wae2_resnet18{form}']
        assert wae['baseline'] == f'resnet18{form}' and wae['same_macs_baseline'] == f'resnet18 @32{form}'
        assert wae['same_macs_speedup'] == pytest.approx(rows[f'resnet18 @32{form}']['median_ms'] / wae['median_ms'])
        assert rows[f'resnet18 @32{form}']['img_size'] == 32
    assert rows['wae2_resnet18 [onnx]']['gmacs'] == rows['wae2_resnet18']['gmacs'] > 0  # the model's, not ORT's 0
    assert 'vs same MACs' in capsys.readouterr().out
    assert cli.main(['bench', 'wae2_resnet18', '--paths', 'onnx', '--dtypes', 'bf16']) == 2
    assert '--paths onnx times ONNX Runtime on the CPU (fp32 input)' in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize('cache', ['true', 'false'])
def test_train_on_a_truncated_jpeg_names_the_file_once_without_a_traceback(cache, tmp_path):
    """The recipe through `timm-wae train` on an ImageFolder holding a truncated JPEG: the run stops with the
    recipe's one-line error naming the file, printed once (not again inside the launcher's CalledProcessError
    traceback), and the decoded cache keeps no partial array."""
    for split in ('train', 'val'):
        for seed, name in enumerate(CLASSES):
            _write_images(tmp_path / 'data' / split / name, 3, seed=seed + len(split))
    bad = sorted((tmp_path / 'data' / 'train').rglob('*.jpg'))[4]
    bad.write_bytes(bad.read_bytes()[:300])
    proc = run_cli('train', 'smoke', f'data.root={tmp_path / "data"}', f'output_dir={tmp_path / "run"}',
                   f'data.cache={cache}', f'data.cache_dir={tmp_path / "cache"}', timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert 'Traceback' not in proc.stderr and 'CalledProcessError' not in proc.stderr, proc.stderr
    assert proc.stderr.count(f"cannot read image '{bad}'") == 1, proc.stderr
    assert not list((tmp_path / 'cache').glob('*.tmp*'))


@pytest.mark.slow
def test_train_ends_by_printing_the_saved_model_and_its_validation_error(tmp_path):
    out = tmp_path / 'run'
    proc = ok(run_cli('train', 'smoke', f'output_dir={out}', 'stages=[2]', f'data.cache_dir={tmp_path / "cache"}',
                      timeout=600))
    val = json.loads((out / 'stage2' / 'done.json').read_text())['val']
    line = proc.stdout.strip().splitlines()[-1]
    assert line == (f'saved model {out / "stage2" / "model"}: validation top-1 error {100 - val["top1"]:.2f} %, '
                    f'top-5 error {100 - val["top5"]:.2f} % ({val["images"]} images)')
    saved = json.loads((out / 'stage2' / 'model' / 'config.json').read_text())
    assert saved['num_classes'] == 3 and 'tag' not in saved['pretrained_cfg']  # not in1k: synthetic data has none
