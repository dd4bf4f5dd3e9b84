"""The ImageNet recipes (configs, not runs), the classification losses they use, and the one-command GPU check
(run here with its CPU-size flag)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from timm_wae.training.config import load_config
from timm_wae.training.stages import batch_mixer, criterion

REPO = Path(__file__).resolve().parents[1]
IMAGENET = REPO / 'recipes' / 'configs' / 'imagenet'


def test_imagenet_configs_load_with_the_schedules_they_name():
    paper = {p.stem: load_config(p, []) for p in sorted(IMAGENET.glob('*.yaml'))}
    assert set(paper) == {'wae_resnet50', 'wae_vgg16', 'wae2_resnet50_a3'}
    for name in ('wae_resnet50', 'wae_vgg16'):  # the paper: three stages, SGD, batch 256, stage 3 at lr 1e-4
        cfg = paper[name]
        assert cfg.stages == [1, 2, 3] and cfg.data.img_size == 224 and cfg.model.num_classes == 1000
        assert (cfg.stage2.opt, cfg.stage2.batch_size, cfg.stage3.lr) == ('sgd', 256, 1e-4)
        assert cfg.data.dataset == 'wds/imagenet-1k' and cfg.data.splits() == ('train', 'validation')
    assert (paper['wae_resnet50'].stage2.lr, paper['wae_vgg16'].stage2.lr) == (0.1, 0.01)
    a3 = paper['wae2_resnet50_a3']
    assert (a3.stages, a3.data.img_size, a3.model.front_end, a3.model.ih_fusion) == ([2], 160, 'wae2', 'stem')
    s = a3.stage2
    assert (s.epochs, s.batch_size, s.opt, s.lr, s.loss, s.bce_target_thresh, s.mixup, s.cutmix) == \
        (100, 2048, 'lamb', 0.008, 'bce', 0.2, 0.1, 1.0)


def test_bce_and_mixup_give_the_losses_of_their_definitions():
    cfg = load_config(IMAGENET / 'wae2_resnet50_a3.yaml', [])
    logits, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    bce = criterion(cfg.stage2)(logits, y)
    assert torch.allclose(bce, F.binary_cross_entropy_with_logits(logits, F.one_hot(y, 5).float()))
    ce = load_config(IMAGENET / 'wae_resnet50.yaml', ['stage2.smoothing=0.1']).stage2
    assert torch.allclose(criterion(ce)(logits, y), F.cross_entropy(logits, y, label_smoothing=0.1))
    mixer = batch_mixer(2, cfg.stage2, 5)
    assert batch_mixer(1, cfg.stage2, 5) is None and batch_mixer(2, ce, 5) is None  # stage 1: no labels; ce: off
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    mixed, soft = mixer(x.clone(), y)
    assert soft.shape == (6, 5) and torch.allclose(soft.sum(1), torch.ones(6)) and not torch.equal(mixed, x)
    assert torch.isfinite(criterion(cfg.stage2)(logits, soft))  # thresholded soft targets
    with pytest.raises(ValueError, match="stage2.loss must be 'ce' or 'bce'"):
        load_config(IMAGENET / 'wae_resnet50.yaml', ['stage2.loss=focal'])


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_with_its_small_flag_and_prints_its_tables():
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
    res = subprocess.run(['bash', str(REPO / 'recipes' / 'gpu_check.sh'), '--small'], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line.split('|')[1:-1] for line in res.stdout.splitlines() if line.startswith('| ')]
    bench = [[c.strip() for c in r] for r in rows if r[0].strip() in ('wae2_resnet18', 'wae_resnet18', 'resnet18')]
    # 3 models x batch 1, 2 x channels_last off, on; each WAE model against its backbone, with a speed-up
    assert len(bench) == 12 and {r[4] for r in bench} == {'no', 'yes'} and {r[6] for r in bench} == {'1', '2'}
    assert all(re.fullmatch(r'[\d.]+x', r[12]) for r in bench if r[0] != 'resnet18')
    train = [[c.strip() for c in r] for r in rows if r[0].strip() == 'wae2_resnet50_a3']
    assert len(train) == 1 and train[0][1:4] == ['2', 'resnet18', 'wae2'] and float(train[0][-1]) > 0


def test_the_multi_node_accelerate_config_is_one_accelerate_reads():
    from accelerate.commands.config.config_args import load_config_from_file
    cfg = load_config_from_file(str(REPO / 'recipes' / 'accelerate' / 'multi_node.yaml'))
    assert (cfg.num_machines, cfg.num_processes, cfg.distributed_type.value, cfg.mixed_precision) == \
        (2, 16, 'MULTI_GPU', 'bf16')
