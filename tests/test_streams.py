"""Training from timm's named datasets: WebDataset shards in timm's layout (tar shards of .jpg/.cls and an
_info.json listing the splits), built here, read by ``timm.data.create_dataset`` and sharded over processes."""
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip('webdataset')  # the [test] extra installs it; the import below needs the [train] extra
from accelerate import Accelerator  # noqa: E402

from timm_wae.training.config import load_config  # noqa: E402
from timm_wae.training.data import build_datasets, epoch_steps, start_epoch, train_loader  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / 'recipes' / 'configs' / 'smoke.yaml'
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]


def write_shards(root: Path, splits, size: int = 40) -> Path:
    """``{split: (shards, images per shard)}`` as tiny-SPLIT-NNNNNN.tar shards of KEY.jpg + KEY.cls, and the
    _info.json that timm's reader takes each split's files and sizes from."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    info = {'name': 'tiny', 'splits': {}}
    for split, (shards, per_shard) in splits.items():
        names = []
        for s in range(shards):
            names.append(f'tiny-{split}-{s:06d}.tar')
            with tarfile.open(root / names[-1], 'w') as tar:
                for i in range(per_shard):
                    c = (s * per_shard + i) % len(COLOURS)
                    pixels = np.clip(np.array(COLOURS[c]) + rng.normal(0, 30, (size, size, 3)), 0, 255)
                    jpg = io.BytesIO()
                    Image.fromarray(pixels.astype(np.uint8)).save(jpg, format='JPEG', quality=90)
                    for ext, data in (('jpg', jpg.getvalue()), ('cls', str(c).encode())):
                        member = tarfile.TarInfo(f'{split}_{s}_{i}.{ext}')
                        member.size = len(data)
                        tar.addfile(member, io.BytesIO(data))
        info['splits'][split] = {'name': split, 'num_samples': shards * per_shard, 'filenames': names,
                                 'shard_lengths': [per_shard] * shards}
    (root / '_info.json').write_text(json.dumps(info))
    return root


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp('shards'), {'train': (4, 6), 'validation': (2, 4)})


def test_dataset_names_and_split_defaults_are_checked():
    cfg = load_config(SMOKE, [])
    assert cfg.data.dataset is None and cfg.data.splits() == ('train', 'val')  # the folder route's
    cfg = load_config(SMOKE, ['data.dataset=wds/tiny'])
    assert cfg.data.splits() == ('train', 'validation')  # timm's names for a dataset's splits
    assert load_config(SMOKE, ['data.dataset=wds/tiny', 'data.val_split=val']).data.splits() == ('train', 'val')
    with pytest.raises(ValueError, match="data.dataset='imagenet'.*wds/NAME"):
        load_config(SMOKE, ['data.dataset=imagenet'])
    with pytest.raises(ValueError, match='set model.num_classes'):
        load_config(SMOKE, ['data.dataset=hfds/x', 'model.num_classes=null'])


def test_a_stream_trains_on_every_image_of_an_epoch_in_batches_and_validates_once(shards):
    cfg = load_config(SMOKE, ['data.dataset=wds/tiny', f'data.root={shards}'])
    dc = dict(input_size=(3, 32, 32), interpolation='bilinear', mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.875)
    accelerator = Accelerator(cpu=True)
    train, val, classes = build_datasets(cfg.data, shards, dc, accelerator, seed=cfg.seed)
    assert (len(train), classes) == (24, None)  # the split's size from _info.json; .cls files name no classes
    loader = train_loader(train, 4, cfg, accelerator)
    assert epoch_steps(loader) == 6
    seen = []
    for epoch in (0, 1):
        start_epoch(loader, epoch, 0)
        batches = list(loader)
        assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 32, 32)] * 6
        seen.append(torch.cat([y for _, y in batches]))
    for labels in seen:  # each epoch: every image once (8 of each class), in an order that differs by epoch
        assert torch.bincount(labels).tolist() == [8, 8, 8]
    assert not torch.equal(seen[0], seen[1])
    val_targets = torch.cat([y for _, y in torch.utils.data.DataLoader(val, batch_size=3)])
    assert sorted(val_targets.tolist()) == sorted((s * 4 + i) % 3 for s in range(2) for i in range(4))
    with pytest.raises(ValueError, match='4 shard.*for 2 process.*x 3 loader worker'):
        train.cfg.workers = 3
        train.make(2, num_processes=2)


@pytest.mark.slow
def test_smoke_config_trains_from_shards_on_two_processes_and_its_model_loads(shards, tmp_path):
    import timm_wae
    out = tmp_path / 'run'
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--num_machines', '1', '--mixed_precision', 'no',
           '--dynamo_backend', 'no', '--num_cpu_threads_per_process', '1', '--multi_gpu', '--num_processes', '2',
           str(REPO / 'recipes' / 'train.py'), str(SMOKE), 'data.dataset=wds/tiny', f'data.root={shards}',
           f'output_dir={out}']
    env = dict(__import__('os').environ, ACCELERATE_USE_CPU='1', OMP_NUM_THREADS='1', TIMM_WAE_CACHE=str(tmp_path))
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert '24 train / 8 val images, 3 classes' in res.stdout and 'batch 4 on 2 process(es)' in res.stdout
    lines = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    vals = [r for r in lines if r.get('split') == 'val']
    assert [r['stage'] for r in vals] == [1, 2, 2, 3] and all(r['images'] == 8 for r in vals)
    assert [r['step'] for r in lines if r.get('split') == 'train' and r['stage'] == 2][-1] == 12  # 2 epochs of 6
    model = timm_wae.load_model(str(out / 'stage3' / 'model')).eval()
    assert model.num_classes == 3 and model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
