"""The training recipe's guards, in process: resume is exact or refused naming the file, an override that changes
what was trained does not resume over it, impossible sizes and unusable output folders are one-line errors,
a corrupt image stops the data pipeline naming it (no partial cache left), and ``timm-wae train`` ends with the
saved model and its validation error.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from accelerate import Accelerator
from PIL import Image
from timm.scheduler import create_scheduler_v2

from timm_wae.evaluate import UnreadableImageError
from timm_wae.training.checkpoint import CheckpointError, load_checkpoint, record_config, save_checkpoint
from timm_wae.training.config import check_paths, load_config
from timm_wae.training.data import cached_image_folder, image_folder
from timm_wae.training.progress import Progress

SMOKE = Path(__file__).resolve().parents[1] / 'recipes' / 'configs' / 'smoke.yaml'


def _parts(seed=0):
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler, _ = create_scheduler_v2(optimizer, sched='cosine', num_epochs=2, updates_per_epoch=3)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer, scheduler


@pytest.fixture
def checkpoint(tmp_path):
    accelerator, model, optimizer, scheduler = _parts()
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    folder = tmp_path / 'stage2' / 'checkpoint'
    folder.parent.mkdir()
    save_checkpoint(folder, accelerator, scheduler, Progress(epoch=1, step=3, metrics_bytes=10))
    return folder


def test_an_intact_checkpoint_resumes_its_progress_and_random_state(checkpoint):
    expected = torch.rand(3)  # the random state right after the save
    accelerator, _, _, scheduler = _parts(seed=1)
    progress = load_checkpoint(checkpoint, accelerator, scheduler)
    assert (progress.epoch, progress.step) == (1, 3)
    assert torch.equal(torch.rand(3), expected)


DAMAGE = {
    'random_states_0.pkl': lambda p: p.write_bytes(p.read_bytes()[:40]),
    'trainer_state.json': lambda p: p.unlink(),
    'pytorch_model.bin': lambda p: p.write_bytes(p.read_bytes()[:100]),
    'optimizer.bin': lambda p: p.write_bytes(p.read_bytes()[:100]),
}


@pytest.mark.parametrize('name', DAMAGE)
def test_a_damaged_or_missing_checkpoint_file_is_refused_naming_it_and_how_to_restart(checkpoint, name):
    DAMAGE[name](checkpoint / name)
    accelerator, _, _, scheduler = _parts(seed=1)
    with pytest.raises(CheckpointError, match=rf'{name}.*delete {checkpoint.parent} .*resume=true'):
        load_checkpoint(checkpoint, accelerator, scheduler)


def test_a_damaged_trainer_state_is_refused_naming_it(checkpoint):
    (checkpoint / 'trainer_state.json').write_text('{"progress": {"epoch": 1}')
    accelerator, _, _, scheduler = _parts(seed=1)
    with pytest.raises(CheckpointError, match='trainer_state.json is damaged'):
        load_checkpoint(checkpoint, accelerator, scheduler)


def test_a_stage_without_a_checkpoint_starts_from_its_beginning(tmp_path):
    accelerator, _, _, scheduler = _parts()
    assert load_checkpoint(tmp_path / 'stage2' / 'checkpoint', accelerator, scheduler) is None


def test_an_override_that_changes_what_was_trained_does_not_resume_over_config_yaml(tmp_path):
    values = {'output_dir': str(tmp_path), 'resume': False, 'data': {'workers': 0, 'img_size': 32},
              'stage2': {'lr': 0.1, 'epochs': 2}, 'debug': {'step_delay': 0.5}}
    record_config(tmp_path, values, resume=False)
    written = (tmp_path / 'config.yaml').read_text()
    changed = json.loads(json.dumps(values))
    changed['stage2']['lr'] = 0.5
    with pytest.raises(CheckpointError, match=r"stage2.lr=0.5 \(trained with 0.1\).*another output_dir"):
        record_config(tmp_path, changed, resume=True)
    how = dict(values, resume=True, data={'workers': 2, 'img_size': 32}, debug={'step_delay': 0.0})
    record_config(tmp_path, how, resume=True)  # how it runs may change
    assert (tmp_path / 'config.yaml').read_text() == written
    assert yaml.safe_load(written)['stage2']['lr'] == 0.1


@pytest.mark.parametrize('override, field', [('stage2.batch_size=0', 'stage2.batch_size'),
                                             ('data.eval_batch_size=0', 'data.eval_batch_size'),
                                             ('log_every=0', 'log_every'),
                                             ('data.workers=-1', 'data.workers')])
def test_impossible_sizes_are_one_line_errors_naming_the_field(override, field):
    with pytest.raises(ValueError, match=rf'^{field} must be >= \d, got -?\d+$'):
        load_config(SMOKE, [override])


def test_an_output_dir_that_is_a_file_is_an_error_naming_the_field(tmp_path):
    (tmp_path / 'taken').write_text('')
    for out in (tmp_path / 'taken', tmp_path / 'taken' / 'run'):
        with pytest.raises(ValueError, match=rf"output_dir='{out}': {tmp_path / 'taken'} is a file, not a folder"):
            check_paths(load_config(SMOKE, [f'output_dir={out}']))


def _images(root: Path, broken: str) -> Path:
    rng = np.random.default_rng(0)
    for c in ('a', 'b'):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(root / c / f'{i}.jpg')
    bad = root / broken
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated download
    return bad


def test_a_corrupt_image_stops_the_cached_pipeline_naming_it_and_leaves_no_partial_cache(tmp_path):
    bad = _images(tmp_path / 'train', 'b/1.jpg')
    cache = tmp_path / 'cache'
    with pytest.raises(UnreadableImageError, match=rf"cannot read image '{bad}'"):
        cached_image_folder(tmp_path / 'train', 16, cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_a_corrupt_image_stops_the_uncached_pipeline_naming_it(tmp_path):
    bad = _images(tmp_path / 'train', 'a/2.jpg')
    folder = image_folder(tmp_path / 'train')
    with pytest.raises(UnreadableImageError, match=rf"cannot read image '{bad}'"):
        [folder[i] for i in range(len(folder))]


def test_train_ends_with_the_saved_model_and_its_validation_error(tmp_path):
    from timm_wae_cli.train import saved_model_line
    cfg = load_config(SMOKE, [f'output_dir={tmp_path}'])
    (tmp_path / 'stage3').mkdir()
    (tmp_path / 'stage3' / 'done.json').write_text(json.dumps({
        'model': str(tmp_path / 'stage3' / 'model'), 'metrics_bytes': 1,
        'val': {'ce': 1.0, 'top1': 62.5, 'top5': 100.0, 'images': 8}}))
    assert saved_model_line(cfg) == (f'saved model {tmp_path / "stage3" / "model"}: validation top-1 error 37.50 %, '
                                     f'top-5 error 0.00 % (8 images)')
