"""The training recipes (recipes/train.py + recipes/configs), run for real with `accelerate launch`.

Every run uses images generated here (3 colour-coded classes of 40x40 JPEGs) and the smoke
config (a 0.4M-parameter ResNet, 32 px): a run of all three stages takes a few seconds.
Runs are compared with each other, never with numbers written into the test.
"""
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import get_type_hints

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hub_server import HubServer, client_env

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / 'recipes' / 'train.py'
CONFIGS = REPO / 'recipes' / 'configs'
SMOKE = CONFIGS / 'smoke.yaml'
ACCELERATE = [sys.executable, '-m', 'accelerate.commands.launch', '--num_machines', '1', '--mixed_precision', 'no',
              '--dynamo_backend', 'no', '--num_cpu_threads_per_process', '1']
TIMING = ('img_per_s', 'data_frac')  # wall-clock fields: the only ones allowed to differ between runs
N_VAL = 9


def load_train_module():
    spec = importlib.util.spec_from_file_location('recipes_train', TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = load_train_module()


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    """ImageFolder: 3 classes of noisy single-colour 40x40 JPEGs, 6 train + 3 val each."""
    root = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    colours = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]
    for split, n in (('train', 6), ('val', N_VAL // 3)):
        for c, colour in enumerate(colours):
            folder = root / split / f'class{c}'
            folder.mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.array(colour) + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f'{i}.jpg', quality=90)
    return root


def command(config, overrides, num_processes=1):
    # --cpu runs one process without MPI; several CPU processes go through torchrun (--multi_gpu)
    # and become gloo workers because of ACCELERATE_USE_CPU=1
    procs = ['--cpu', '--num_processes', '1'] if num_processes == 1 else \
        ['--multi_gpu', '--num_processes', str(num_processes)]
    return [*ACCELERATE, *procs, str(TRAIN), str(config), *overrides]


def run_env(cache_dir, extra=None):
    env = dict(os.environ, ACCELERATE_USE_CPU='1', TIMM_WAE_CACHE=str(cache_dir), OMP_NUM_THREADS='1',
               PYTHONUNBUFFERED='1', **(extra or {}))
    env.pop('HF_ENDPOINT', None)
    return env


def launch(data_root, out, *overrides, config=SMOKE, num_processes=1, env=None, check=True, timeout=600):
    cmd = command(config, [f'data.root={data_root}', f'output_dir={out}', *overrides], num_processes)
    res = subprocess.run(cmd, cwd=REPO, env=env or run_env(out.parent / 'cache'), capture_output=True,
                         text=True, timeout=timeout)
    if check and res.returncode != 0:
        pytest.fail(f'{" ".join(cmd)}\nexited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}')
    return res


def metrics(out):
    return [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def weights(folder):
    return load_file(str(folder / 'model.safetensors'))


# ----------------------------------------------------------------------------- configuration
def test_every_config_loads_and_every_field_is_documented():
    readme = (REPO / 'recipes' / 'README.md').read_text()

    def names(cls, prefix=''):
        for f in fields(cls):
            tp = get_type_hints(cls)[f.name]
            if f.name == 'stage_cfgs':  # `stageN:` sections: one StageConfig per row of the stage table
                assert [f'`stage{n}`' in readme for n in train.STAGES] == [True] * len(train.STAGES)
                yield from names(train.StageConfig, 'stageN.')
            elif is_dataclass(tp):
                yield from names(tp, f'{prefix}{f.name}.')
            else:
                yield f.name
    missing = sorted({n for n in names(train.Config)} - {n for n in names(train.Config) if f'`{n}`' in readme})
    assert not missing, f'fields missing from recipes/README.md: {missing}'
    configs = sorted(CONFIGS.glob('*.yaml'))
    expected = {'smoke', 'wae', 'wae_no_stage3', 'full_resolution', 'ir', 'wavelet_cnn', 'decomposition_cnn',
                'il_only'}
    assert expected <= {p.stem for p in configs}
    for path in configs:
        cfg = train.load_config(path, [])
        assert cfg.stages and cfg.data.img_size > 0, path
        if path.stem == 'convert':  # a fine-tune of the user's network, not a row trained from scratch
            assert cfg.model.backbone is None and cfg.model.front_end == 'wae2' and cfg.model.ih_fusion == 'stem'
            assert (cfg.stages, cfg.stage2.epochs, cfg.stage2.train_front_end, cfg.distill.weight) == ([2], 3, True, 1.0)
            continue
        if path.stem != 'smoke':  # the Imagenette rows share the classifier budget
            assert cfg.data.root == '../shared/data/imagenette160' and cfg.data.img_size == 128
            assert replace(cfg.stage2, train_front_end=False) == train.load_config(CONFIGS / 'wae.yaml', []).stage2
            assert cfg.model.backbone == 'resnet18'


def test_dotted_overrides_are_typed_and_checked():
    cfg = train.load_config(SMOKE, ['stage2.epochs=3', 'data.max_per_class=5', 'data.img_size=48',
                                   'model.backbone=resnet10t', 'output_dir=elsewhere', 'stage3.lr=1e-4',
                                   'stages=[2]', 'init_from=some/folder', 'data.scale=[0.5, 1]', 'resume=true'])
    assert (cfg.stage2.epochs, cfg.data.max_per_class, cfg.data.img_size) == (3, 5, 48)
    assert cfg.model.backbone == 'resnet10t' and cfg.output_dir == 'elsewhere' and cfg.resume is True
    assert cfg.stage3.lr == 1e-4 and isinstance(cfg.stage3.lr, float)  # YAML alone reads 1e-4 as a string
    assert cfg.stages == [2] and cfg.init_from == 'some/folder' and cfg.data.scale == (0.5, 1.0)
    with pytest.raises(ValueError, match='stage2.epoch'):
        train.load_config(SMOKE, ['stage2.epoch=3'])
    with pytest.raises(ValueError, match='data.img_size must be int'):
        train.load_config(SMOKE, ['data.img_size=big'])
    with pytest.raises(ValueError, match='stage 1 trains the WAE'):
        train.load_config(SMOKE, ['model.front_end=dwt97'])
    with pytest.raises(ValueError, match='stages'):
        train.load_config(SMOKE, ['stages=[3, 2]'])


def test_experiment_configs_state_their_differences_from_a_base(tmp_path):
    """``base:`` merges field by field; the base's other fields stay; cycles and missing bases are named."""
    for name in ('wavelet_cnn', 'full_resolution', 'wae2_stem'):
        assert 'base:' in (CONFIGS / f'{name}.yaml').read_text()
    stem, base = train.load_config(CONFIGS / 'wae2_stem.yaml', []), train.load_config(CONFIGS / 'wae.yaml', [])
    assert (stem.model.front_end, stem.model.ih_fusion, stem.stages) == ('wae2', 'stem', [2])  # wae2.yaml, then its own
    assert stem.stage2.train_front_end and replace(stem.stage2, train_front_end=False) == base.stage2
    assert stem.data == base.data and stem.model.channels_last == base.model.channels_last
    (tmp_path / 'a.yaml').write_text('base: b.yaml\nseed: 1\n')
    (tmp_path / 'b.yaml').write_text('base: a.yaml\n')
    with pytest.raises(ValueError, match='cycle'):
        train.load_config(tmp_path / 'a.yaml', [])
    (tmp_path / 'c.yaml').write_text('base: nowhere.yaml\n')
    with pytest.raises(FileNotFoundError, match="base config 'nowhere.yaml' does not exist"):
        train.load_config(tmp_path / 'c.yaml', [])
    with pytest.raises(ValueError, match='stage1.energy_weight'):  # λ left the model's arguments
        train.load_config(CONFIGS / 'wae.yaml', ['model.energy_weight=0.5'])
    assert train.load_config(CONFIGS / 'wae.yaml', ['stage3.energy_weight=0.5']).stage3.energy_weight == 0.5


# ----------------------------------------------------------------------------- data
@pytest.mark.slow
def test_decoded_cache_is_built_once_atomically_and_keyed_by_content(data_root, tmp_path):
    from timm_wae.training.data import cached_image_folder, image_folder
    cache = tmp_path / 'cache'
    a = cached_image_folder(data_root / 'train', 24, cache, max_per_class=4)
    files = sorted(cache.iterdir())
    assert [f.suffix for f in files] == ['.json', '.npy']  # no temporary file left behind
    stamp = [f.stat().st_mtime_ns for f in files]
    b = cached_image_folder(data_root / 'train', 24, cache, max_per_class=4)
    assert [f.stat().st_mtime_ns for f in sorted(cache.iterdir())] == stamp  # read, not rebuilt
    ref = image_folder(data_root / 'train', max_per_class=4)
    assert len(a) == len(ref) == 12 and a.targets == [ref.dataset.targets[i] for i in ref.indices]
    img, target = b[5]
    assert img.dtype == torch.uint8 and img.shape == (3, 24, 24) and target == a.targets[5]
    # the decoded pixels are the image's (40 -> 24 px resize of a flat colour + noise)
    path = a.samples[5][0]
    mean = np.asarray(Image.open(path).convert('RGB'), dtype=np.float64).mean((0, 1))
    assert np.allclose(img.double().mean((1, 2)).numpy(), mean, atol=3)
    # another size, or a changed file, is another cache
    cached_image_folder(data_root / 'train', 16, cache, max_per_class=4)
    assert len(list(cache.glob('*.npy'))) == 2
    changed = tmp_path / 'changed'
    import shutil
    shutil.copytree(data_root / 'train', changed)
    Image.new('RGB', (40, 40), (0, 0, 0)).save(changed / 'class0' / '0.jpg')
    c = cached_image_folder(changed, 24, cache, max_per_class=4)
    assert len(list(cache.glob('*.npy'))) == 3 and int(c[0][0].max()) < 10


@pytest.mark.slow
def test_seeded_batches_do_not_depend_on_process_count_and_resume_mid_epoch(data_root, tmp_path):
    from timm_wae.training.data import SeededBatchSampler, SeededTransform, cached_image_folder, tensor_transform
    one = SeededBatchSampler(18, 6, seed=3)
    two = [SeededBatchSampler(18, 6, seed=3, rank=r, world_size=2) for r in range(2)]
    for epoch in (0, 1):
        for s in (one, *two):
            s.set_epoch(epoch)
        merged = [a + b for a, b in zip(*two)]
        assert list(one) == merged and len(merged) == 3
    one.set_epoch(0)
    first = list(one)
    one.set_epoch(1)
    assert list(one) != first  # a new order every epoch
    one.set_epoch(0, start_batch=2)
    assert list(one) == first[2:]
    ds = SeededTransform(cached_image_folder(data_root / 'train', 40, tmp_path), tensor_transform(32, True))
    key = first[0][0]
    assert torch.equal(ds[key][0], ds[key][0])  # same (index, seed): same crop and flip
    other = next(k for k in first[1] + first[2] if k[0] != key[0])
    assert not torch.equal(ds[key][0], ds[(key[0], other[1])][0])


# ----------------------------------------------------------------------------- full runs
@pytest.fixture(scope='module')
def reference(data_root, tmp_path_factory):
    """One uninterrupted smoke run of all three stages, pushed to a loopback Hub at the end."""
    base = tmp_path_factory.mktemp('reference')
    out = base / 'run'
    with HubServer(base / 'hub') as server:
        env = dict(client_env(base / 'hf', server.url), ACCELERATE_USE_CPU='1', OMP_NUM_THREADS='1',
                   TIMM_WAE_CACHE=str(base / 'cache'))
        res = launch(data_root, out, 'push_to_hub=user/smoke', env=env)
    return out, res, base / 'hub' / 'user' / 'smoke'


@pytest.mark.slow
def test_smoke_run_logs_every_metric_and_saves_each_stage_in_the_hub_layout(reference):
    out, res, pushed = reference
    records = metrics(out)
    for stage, terms in ((1, {'loss', 'lt_recon', 'lt_energy'}), (2, {'loss', 'lc', 'top1', 'top5'}),
                         (3, {'loss', 'lc', 'lt', 'lt_recon', 'lt_energy', 'top1', 'top5'})):
        rows = [r for r in records if r.get('stage') == stage and r['split'] == 'train']
        assert rows, stage
        for r in rows:
            assert terms | {'lr', 'img_per_s', 'epoch', 'step'} <= set(r), r
            assert all(math.isfinite(r[k]) for k in terms) and r['img_per_s'] > 0
        val = [r for r in records if r.get('stage') == stage and r['split'] == 'val']
        assert len(val) == train.load_config(SMOKE, []).stage(stage).epochs
        assert all(r['images'] == N_VAL for r in val)
        folder = out / f'stage{stage}' / 'model'
        assert {'config.json', 'model.safetensors', 'README.md'} <= {p.name for p in folder.iterdir()}
        done = json.loads((out / f'stage{stage}' / 'done.json').read_text())['val']
        assert done == {k: val[-1][k] for k in done}
    # stage 3's loss is Lc + gamma * Lt, as logged
    gamma = train.load_config(SMOKE, []).stage3.gamma
    for r in (r for r in records if r.get('stage') == 3 and r['split'] == 'train'):
        assert r['loss'] == pytest.approx(r['lc'] + gamma * r['lt'], rel=1e-5)
    # the lr follows the schedule: stage 2's cosine decays
    lrs = [r['lr'] for r in records if r.get('stage') == 2 and r['split'] == 'train']
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > lrs[-1]
    assert 'stage 2 epoch 2/2' in res.stderr  # the tqdm bar
    # stage 2 kept stage 1's WAE frozen; the final model went to the Hub and reloads
    s1, s2, s3 = (weights(out / f'stage{s}' / 'model') for s in (1, 2, 3))
    wae = [k for k in s1 if k.startswith('front_end.') and '.norm_' not in k]  # norms: still learning
    assert wae and all(torch.equal(s1[k], s2[k]) for k in wae)
    assert any(not torch.equal(s2[k], s3[k]) for k in wae)  # stage 3 trains it again
    assert (pushed / 'model.safetensors').read_bytes() == (out / 'stage3' / 'model' / 'model.safetensors').read_bytes()
    from timm_wae import load_model as create_model
    model = create_model(str(out / 'stage3' / 'model'))
    assert model.pretrained_cfg['label_names'] == ['class0', 'class1', 'class2']


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics_and_weights(reference, data_root, tmp_path):
    """SIGKILL in the middle of stage 2, after its first (mid-epoch) checkpoint and after a metrics
    line that checkpoint does not cover; the resumed run must redo that line identically."""
    ref_out = reference[0]
    out = tmp_path / 'run'
    log = out / 'metrics.jsonl'
    # step_delay only slows the run down (0.5 s after each step) so the kill lands before step 4
    cmd = command(SMOKE, [f'data.root={data_root}', f'output_dir={out}', 'debug.step_delay=0.5'])
    proc = subprocess.Popen(cmd, cwd=REPO, env=run_env(tmp_path / 'cache'), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (log.exists() and '"stage": 2, "split": "train", "epoch": 0, "step": 3,' in log.read_text()):
            assert proc.poll() is None, 'the run ended before stage 2 logged step 3'
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the training process
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # killed between the checkpoint of step 2 (which holds partial metric sums: lines come every 3
    # steps) and the next one, with the line of step 3 already written
    ckpt = out / 'stage2' / 'checkpoint'
    progress = json.loads((ckpt / 'trainer_state.json').read_text())['progress']
    assert (progress['step'], progress['epoch']) == (2, 0) and json.loads((ckpt / 'meters_0.json').read_text())
    assert not (out / 'stage2' / 'done.json').exists()
    res = launch(data_root, out, 'resume=true')
    assert 'stage 1: already done' in res.stdout and 'stage 2: resuming at epoch 0, batch 2' in res.stdout
    assert without_timing(metrics(out)) == without_timing(metrics(ref_out))
    for stage in (2, 3):
        a, b = weights(out / f'stage{stage}' / 'model'), weights(ref_out / f'stage{stage}' / 'model')
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_of_the_old_format_is_named_not_silently_restarted(tmp_path):
    """timm_wae 0.1 wrote one state.pt per checkpoint; resuming it with this version would restart the
    stage from scratch, so it is refused with the way to resume it."""
    ckpt = tmp_path / 'stage2' / 'checkpoint'
    ckpt.mkdir(parents=True)
    torch.save({'progress': {'epoch': 1}}, ckpt / 'state.pt')
    with pytest.raises(ValueError, match='checkpoint of timm_wae 0.1.*git checkout 162fc0a'):
        train.load_checkpoint(ckpt, None, None)


@pytest.mark.slow
@pytest.mark.parametrize('fault', ['debug.nan_at_step=5', 'stage2.lr=1e30'])
def test_nonfinite_loss_stops_with_a_message_and_the_last_checkpoint_intact(fault, data_root, tmp_path):
    out = tmp_path / 'run'
    res = launch(data_root, out, fault, check=False)
    assert res.returncode != 0
    assert 'error: stage 2: the loss is' in res.stderr and 'stage2.lr' in res.stderr
    assert not (out / 'stage2' / 'done.json').exists() and (out / 'stage1' / 'done.json').exists()
    last = json.loads((out / 'metrics.jsonl').read_text().splitlines()[-1])
    assert last['stage'] == 2 and 'non-finite loss' in last['error']
    ckpt = out / 'stage2' / 'checkpoint'
    if fault.startswith('debug'):  # step 5 comes after the end-of-epoch-1 checkpoint (step 4)
        progress = json.loads((ckpt / 'trainer_state.json').read_text())['progress']
        assert progress['step'] == 5 - 1 and progress['epoch'] == 1
        state = torch.load(ckpt / 'pytorch_model.bin', weights_only=True)  # accelerate's save_state
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
        assert f'Last good checkpoint: {ckpt}' in res.stderr
        # and the run can go on from it, once the fault is gone
        fixed = launch(data_root, out, 'resume=true')
        assert 'stage 2: resuming at epoch 1' in fixed.stdout and (out / 'stage3' / 'done.json').exists()
    else:  # diverges on its first update: nothing of stage 2 was saved, stage 1's model is the restart point
        assert not ckpt.exists() and 'none in this stage yet' in res.stderr


@pytest.mark.slow
def test_two_processes_train_and_evaluate_like_one(reference, data_root, tmp_path):
    out = tmp_path / 'ddp'
    # global batch 6 = 3 per process; BatchNorm statistics are per process, as usual with DDP
    batches = [f'stage{s}.batch_size=6' for s in (1, 2, 3)]
    launch(data_root, out, *batches, num_processes=2)
    records = metrics(out)
    val = [r for r in records if r.get('split') == 'val']
    assert len(val) == 4 and all(r['images'] == N_VAL for r in val)  # gather_for_metrics drops the padding
    assert all((out / f'stage{s}' / 'done.json').exists() for s in (1, 2, 3))
    # the same model evaluated by 1 and by 2 processes (eval batch 4 per process: 9 = 4+4 + 1 padded)
    model = reference[0] / 'stage3' / 'model'
    results = []
    for n in (1, 2):
        ev = tmp_path / f'eval{n}'
        launch(data_root, ev, 'mode=eval', f'init_from={model}', num_processes=n)
        (r,) = metrics(ev)
        assert r['num_processes'] == n
        results.append(r)
    one, two = results
    assert one['images'] == two['images'] == N_VAL
    assert (one['top1'], one['top5']) == (two['top1'], two['top5'])
    assert one['ce'] == pytest.approx(two['ce'], rel=1e-5) and one['lt'] == pytest.approx(two['lt'], rel=1e-5)
    # and they agree with the val metrics the training run itself logged for that model
    ref_val = [r for r in metrics(reference[0]) if r.get('stage') == 3 and r['split'] == 'val'][-1]
    assert (one['top1'], one['top5']) == (ref_val['top1'], ref_val['top5'])


# ----------------------------------------------------------------------------- every experiment's config
TINY = ['data.img_size=32', 'data.max_per_class=6', 'data.eval_batch_size=8', 'data.workers=0',
        'model.backbone=test_resnet', 'log_every=2', 'checkpoint_every=0',
        'stage1.epochs=1', 'stage1.batch_size=4', 'stage1.max_steps_per_epoch=2',
        'stage2.epochs=1', 'stage2.batch_size=6', 'stage2.warmup_epochs=0',
        'stage3.epochs=1', 'stage3.batch_size=6']


@pytest.mark.slow
@pytest.mark.parametrize('name', ['wae', 'wae_no_stage3', 'il_only', 'full_resolution', 'ir', 'wavelet_cnn',
                                  'decomposition_cnn', 'wae2', 'wae2_stem'])
def test_each_imagenette_config_trains_what_its_row_needs(name, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv('TIMM_WAE_CACHE', str(tmp_path / 'cache'))
    out = tmp_path / 'run'
    config = CONFIGS / f'{name}.yaml'
    assert train.main([str(config), f'data.root={data_root}', f'output_dir={out}', *TINY]) == 0
    cfg = train.load_config(config, TINY)
    assert [s for s in (1, 2, 3) if (out / f'stage{s}' / 'done.json').exists()] == cfg.stages
    last = out / f'stage{cfg.stages[-1]}' / 'model'
    config_json = json.loads((last / 'config.json').read_text())
    state = weights(last)
    if name == 'full_resolution':
        assert config_json['architecture'] == 'test_resnet' and not any(k.startswith('front_end.') for k in state)
        return
    args = config_json['model_args']
    assert args['front_end'] == cfg.model.front_end and args['use_ih'] == cfg.model.use_ih
    assert args['ih_fusion'] == cfg.model.ih_fusion
    branch = cfg.model.use_ih and cfg.model.ih_fusion == 'branch'
    assert any(k.startswith('ih_branch.') for k in state) == branch
    if name.startswith('wae2'):  # end to end from the Haar start: the encoder moved, IH fed where configured
        train.set_seed(cfg.seed + 2)
        init = train.build_model(cfg.model, 3).state_dict()
        assert not torch.equal(state['front_end.encoder.analysis.weight'], init['front_end.encoder.analysis.weight'])
        first = train.build_model(cfg.model, 3).backbone.pretrained_cfg['first_conv']
        assert state[f'backbone.{first}.weight'].shape[1] == (3 if branch else 12)
    if name == 'decomposition_cnn':  # encoder trained on Lc alone, decoder never touched
        train.set_seed(cfg.seed + 2)
        init = train.build_model(cfg.model, 3).state_dict()
        enc = [k for k in state if k.startswith('front_end.encoder.')]
        dec = [k for k in state if k.startswith('front_end.decoder.')]
        assert enc and not dec  # no transform loss, so no decoder: every parameter of the model is trained
        assert any(not torch.equal(state[k], init[k]) for k in enc)


@pytest.mark.slow
def test_loader_mode_reports_images_per_second(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv('TIMM_WAE_CACHE', str(tmp_path / 'cache'))
    out = tmp_path / 'run'
    for cache in ('true', 'false'):
        assert train.main([str(SMOKE), f'data.root={data_root}', f'output_dir={out}', 'mode=loader',
                           f'data.cache={cache}', 'loader_batches=3']) == 0
    with_cache, without = metrics(out)
    assert with_cache['cache'] is True and without['cache'] is False
    assert with_cache['images'] == without['images'] == 3 * 4 and with_cache['img_per_s'] > 0


@pytest.mark.slow
def test_a_single_stage_starts_from_init_from(reference, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv('TIMM_WAE_CACHE', str(tmp_path / 'cache'))
    stage1 = reference[0] / 'stage1' / 'model'
    out = tmp_path / 'run'
    assert train.main([str(SMOKE), f'data.root={data_root}', f'output_dir={out}', 'stages=[2]',
                       f'init_from={stage1}', 'stage2.epochs=1']) == 0
    assert not (out / 'stage1').exists() and not (out / 'stage3').exists()
    init, trained = weights(stage1), weights(out / 'stage2' / 'model')
    wae = [k for k in init if k.startswith('front_end.') and '.norm_' not in k]
    assert wae and all(torch.equal(init[k], trained[k]) for k in wae)  # loaded, then frozen
    assert any(not torch.equal(init[k], trained[k]) for k in init if k.startswith('backbone.'))


@pytest.mark.slow
def test_converting_a_trained_network_with_distillation(data_root, tmp_path, monkeypatch, capsys):
    """The speed-accuracy study's ft_ rows: a trained plain network becomes the WAE model's backbone
    and its teacher; a teacher or backbone that does not fit is refused before any training."""
    monkeypatch.setenv('TIMM_WAE_CACHE', str(tmp_path / 'cache'))
    trained = tmp_path / 'full'
    assert train.main([str(CONFIGS / 'full_resolution.yaml'), f'data.root={data_root}', f'output_dir={trained}',
                       *TINY]) == 0
    teacher = trained / 'stage2' / 'model'
    out = tmp_path / 'ft'
    assert train.main([str(CONFIGS / 'wae2_stem.yaml'), f'data.root={data_root}', f'output_dir={out}', *TINY,
                       f'model.backbone_from={teacher}', f'distill.teacher={teacher}', 'distill.temperature=2']) == 0
    train_lines = [r for r in metrics(out) if r.get('split') == 'train']
    assert train_lines and all(r['kd'] >= 0 and r['loss'] == pytest.approx(r['lc'] + r['kd'], rel=1e-5)
                               for r in train_lines)
    saved = [torch.load(f, map_location='cpu', weights_only=True) for f in (out / 'stage2' / 'checkpoint').glob('*.bin')]
    assert saved and not [k for state in saved for k in state if 'teacher' in k]  # the teacher stays in its own file
    # the backbone started from the trained one: at step 0 the IL part of conv1 is the trained conv1
    cfg = train.load_config(CONFIGS / 'wae2_stem.yaml', [*TINY, f'model.backbone_from={teacher}'])
    start = train.build_model(cfg.model, 3)
    first = start.backbone.pretrained_cfg['first_conv']
    torch.testing.assert_close(start.backbone.get_submodule(first).weight[:, :3], weights(teacher)[f'{first}.weight'])

    # the conversion recipe: the architecture comes from the network (model.backbone null in convert.yaml), the
    # model starts as the network on the pooled image, and a bare weights file converts too once named
    tiny = [o for o in TINY if not o.startswith('model.backbone=')]
    out = tmp_path / 'convert'
    assert train.main([str(CONFIGS / 'convert.yaml'), f'data.root={data_root}', f'output_dir={out}', *tiny,
                       f'model.backbone_from={teacher}', f'distill.teacher={teacher}']) == 0
    saved_cfg = train.load_config(out / 'config.yaml', [])
    assert saved_cfg.model.backbone == 'test_resnet' and (out / 'stage2' / 'done.json').is_file()
    from timm_wae import load_model as create_model
    network = create_model(str(teacher)).eval()
    x = torch.randn(2, 3, 32, 32)
    for spec, extra in ((str(teacher), []), (str(teacher / 'model.safetensors'), ['model.backbone=test_resnet'])):
        cfg = train.load_config(CONFIGS / 'convert.yaml', [f'model.backbone_from={spec}', *extra])
        start = train.build_model(replace(cfg.model, backbone=cfg.model.backbone or 'test_resnet'), 3).eval()
        with torch.no_grad():
            ref = network(torch.nn.functional.avg_pool2d(x, 2))
            assert ((start(x) - ref).norm() / ref.norm()).item() <= 1e-4, spec
    # the warm-up: while the backbone is held only the new parts learn (the front end, conv1 that reads IH);
    # the network's other parameters stay the trained ones (its BatchNorm statistics may follow IL)
    out = tmp_path / 'held'
    assert train.main([str(CONFIGS / 'convert.yaml'), f'data.root={data_root}', f'output_dir={out}', *tiny,
                       f'model.backbone_from={teacher}', f'distill.teacher={teacher}',
                       'stage2.hold_backbone_epochs=1']) == 0
    net, held = weights(teacher), weights(out / 'stage2' / 'model')
    params = {n for n, _ in create_model(str(teacher)).named_parameters()}
    kept = [n for n in params if not n.startswith(f'{first}.')]
    assert kept and all(torch.equal(held[f'backbone.{n}'], net[n]) for n in kept)
    assert not torch.equal(held[f'backbone.{first}.weight'][:, 3:], torch.zeros_like(held[f'backbone.{first}.weight'][:, 3:]))
    # BatchNorm statistics re-estimated on the new input before the first step (a fresh start only), and the
    # new parts at a scaled lr
    out = tmp_path / 'recal'
    capsys.readouterr()
    assert train.main([str(CONFIGS / 'convert.yaml'), f'data.root={data_root}', f'output_dir={out}', *tiny,
                       f'model.backbone_from={teacher}', f'distill.teacher={teacher}', 'stage2.recalibrate_bn=8',
                       'stage2.new_parts_lr_scale=10']) == 0  # batches of 6: two
    assert 'stage 2: BatchNorm statistics re-estimated on 12 training images' in capsys.readouterr().out
    assert any(not torch.equal(held[k], start.state_dict()[k]) for k in held if k.startswith('front_end.encoder'))
    with pytest.raises(ValueError, match='hold_backbone_epochs holds a WAE model'):
        train.load_config(CONFIGS / 'full_resolution.yaml', ['stage2.hold_backbone_epochs=1'])
    with pytest.raises(ValueError, match='is a weights file: name its architecture'):
        train.main([str(CONFIGS / 'convert.yaml'), f'data.root={data_root}', f'output_dir={tmp_path / "nofile"}',
                    *tiny, f'model.backbone_from={teacher / "model.safetensors"}'])

    for bad, message in ((['distill.teacher=' + str(tmp_path / 'nowhere')], 'could not load the distillation teacher'),
                         ([f'distill.teacher={teacher}', 'model.num_classes=5'], 'num_classes=5'),
                         ([f'model.backbone_from={teacher}', 'model.backbone=resnet18'], "this run needs a 'resnet18'")):
        out = tmp_path / f'bad{len(message)}'
        with pytest.raises(ValueError, match=message):
            train.main([str(CONFIGS / 'wae2_stem.yaml'), f'data.root={data_root}', f'output_dir={out}', *TINY, *bad])
        assert not (out / 'stage2').exists()  # refused before training


@pytest.mark.slow
def test_a_lower_resolution_student_learns_from_the_teacher_s_view_of_the_full_crop(data_root, tmp_path,
                                                                                      monkeypatch):
    """Fair distillation: a student at a lower resolution than its teacher trains on crops made at the
    teacher's size; the step resizes them down for the student, and the teacher sees them as they are."""
    seen = {}

    class Recorder(torch.nn.Module):
        def __init__(self, name, net):
            super().__init__()
            self.name, self.net = name, net

        def forward(self, x):
            seen[self.name] = tuple(x.shape[-2:])
            return self.net(x)

    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 4))
    cfg = train.load_config(CONFIGS / 'full_resolution.yaml', [])
    teacher = train.Teacher(Recorder('teacher', net), (32, 32))
    objective = train.Objective(Recorder('student', net), 2, cfg.stage2, train.TransformLoss(0.25), teacher=teacher,
                                distill=cfg.distill, input_size=(16, 16))
    out = objective(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert seen == {'student': (16, 16), 'teacher': (32, 32)} and out['kd'] >= 0

    monkeypatch.setenv('TIMM_WAE_CACHE', str(tmp_path / 'cache'))
    trained = tmp_path / 'full'
    assert train.main([str(CONFIGS / 'full_resolution.yaml'), f'data.root={data_root}', f'output_dir={trained}',
                       *TINY]) == 0
    low = tmp_path / 'low'
    assert train.main([str(CONFIGS / 'full_resolution.yaml'), f'data.root={data_root}', f'output_dir={low}', *TINY,
                       'data.img_size=16', f'init_from={trained / "stage2" / "model"}',
                       f'distill.teacher={trained / "stage2" / "model"}']) == 0
    assert json.loads((low / 'stage2' / 'model' / 'config.json').read_text())['pretrained_cfg']['input_size'] == [3, 16, 16]


@pytest.mark.slow
def test_smoke_config_runs_from_a_fresh_clone_on_data_it_makes(tmp_path, monkeypatch):
    """smoke.yaml names no data set (data.root null): it makes a synthetic one under output_dir."""
    monkeypatch.setenv('TIMM_WAE_CACHE', str(tmp_path / 'cache'))
    out = tmp_path / 'run'
    assert train.main([str(SMOKE), f'output_dir={out}', 'stages=[2]', 'stage2.epochs=1']) == 0
    made = sorted(p.relative_to(out / 'synthetic_data').parts[:2] for p in (out / 'synthetic_data').rglob('*.jpg'))
    assert {m[0] for m in made} == {'train', 'val'} and {m[1] for m in made} == {'class0', 'class1', 'class2'}
    assert (out / 'stage2' / 'done.json').is_file()
    with pytest.raises(FileNotFoundError, match="nowhere/train' does not exist"):
        train.main([str(SMOKE), f'output_dir={tmp_path / "other"}', f'data.root={tmp_path / "nowhere"}'])
