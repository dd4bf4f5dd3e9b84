"""torchvision classifiers and plain nn.Module classifiers wrapped through the adapter (surgery/adapter.py)."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn

import timm_wae
from timm_wae import BackboneError, WAEWrapper
from timm_wae.surgery import ClassifierAdapter
from timm_wae.weights import save_pretrained

STEM = dict(front_end='wae2', ih_fusion='stem')
BRANCH = dict(front_end='wae')


class TinyCNN(nn.Module):
    """A user's own classifier: no timm contract, an nn.Linear head on pooled maps."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(F.relu(self.conv2(x)).mean((2, 3)))


def _trained(name: str) -> nn.Module:
    """A network with non-trivial BatchNorm statistics, as a trained one has, in eval mode."""
    torch.manual_seed(0)
    net = TinyCNN() if name == 'tiny' else torchvision.models.get_model(name, num_classes=10)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize('name', ['resnet18', 'mobilenet_v3_small', 'squeezenet1_0', 'shufflenet_v2_x0_5'])
@pytest.mark.parametrize('mode', [STEM, BRANCH], ids=['stem', 'branch'])
def test_torchvision_families_wrap_in_both_modes(name, mode):
    model = WAEWrapper(f'torchvision:{name}', num_classes=7, **mode).eval()
    assert model.backbone.pretrained_cfg['architecture'] == f'torchvision:{name}'
    assert (model.ih_branch is None) == (mode is STEM) and (model.ih_readers != ()) == (mode is STEM)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    if mode is STEM:  # the 9 IH channels enter the network's own first conv, at zero
        conv = model.backbone.get_submodule(model.ih_readers[0])
        assert conv.in_channels == 3 + model.front_end.high_chans


@pytest.mark.parametrize('name', ['resnet18', 'mobilenet_v3_small', 'efficientnet_b0', 'convnext_tiny', 'tiny'])
def test_from_trained_starts_as_the_network_on_the_pooled_image_and_leaves_it_untouched(name):
    net = _trained(name)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [STEM, BRANCH] if name in ('resnet18', 'tiny') else [STEM]
    x = torch.randn(2, 3, 96, 96)
    for mode in modes:
        model = WAEWrapper.from_trained(net, ih_fusion=mode.get('ih_fusion', 'branch')).eval()
        with torch.no_grad():
            got, ref = model(x), net(F.avg_pool2d(x, 2))
        assert ((got - ref).norm() / ref.norm()).item() <= 1e-4, (name, mode)
    after = net.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not net.training and not isinstance(net, ClassifierAdapter)
    with torch.no_grad():  # still runs at full resolution, as it was
        assert net(x).shape == (2, 10 if name != 'tiny' else 5)


def test_the_adapter_cuts_before_the_head_exactly():
    net = _trained('squeezenet1_0')  # a 1x1-conv classifier, then ReLU and pooling after it
    adapter = ClassifierAdapter(net)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ref = net(x)
        maps = adapter.forward_features(x)
        assert maps.shape[1] == adapter.num_features == 512 and maps.ndim == 4
        assert torch.equal(adapter.forward_head(maps), ref)
    adapter.reset_classifier(3)
    assert adapter.num_classes == 3 and adapter(x).shape == (1, 3)
    adapter.reset_classifier(0)
    assert adapter(x).shape[1] == 512


@pytest.mark.parametrize('source', ['name', 'module'])
def test_a_wrapped_torchvision_model_saves_and_loads_with_identical_outputs(tmp_path, source):
    if source == 'name':
        model = WAEWrapper('torchvision:mobilenet_v3_small', num_classes=6, **BRANCH)
    else:  # config.json names the builder that made the module
        model = WAEWrapper.from_trained(_trained('resnet18'))
    model.eval()
    save_pretrained(model, tmp_path / 'model')
    loaded = timm_wae.load_model(str(tmp_path / 'model')).eval()
    assert loaded.model_args['backbone'] == model.model_args['backbone']
    assert loaded.model_args['backbone'].startswith('torchvision:')
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


class _DataDependent(TinyCNN):
    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return super().forward(x)


class _SkipIntoHead(TinyCNN):
    def forward(self, x):
        a = F.relu(self.bn(self.conv(x)))
        b = F.relu(self.conv2(a))
        return self.fc(torch.cat([b.mean((2, 3))[:, :8], a.mean((2, 3))], 1))


@pytest.mark.parametrize('network, message', [
    (nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(8)),
     r"'3' \(BatchNorm1d\), is not a classifier"),
    (_DataDependent(), 'torch.fx cannot trace its forward'),
    (_SkipIntoHead(), "head layer 'mean_1' reads 'relu' besides the feature maps 'relu_1'"),
])
def test_a_network_that_cannot_be_adapted_is_refused_by_layer(network, message):
    with pytest.raises(BackboneError, match=message):
        WAEWrapper(network, **STEM)


def test_what_cannot_be_saved_or_downloaded_is_said(tmp_path):
    model = WAEWrapper.from_trained(TinyCNN())
    with pytest.raises(ValueError, match="config.json cannot record how to build the backbone 'TinyCNN'"):
        save_pretrained(model, tmp_path / 'tiny')
    with pytest.raises(ValueError, match="resnet18 has no weights 'NO_SUCH'"):
        timm_wae.load_model('torchvision:resnet18.NO_SUCH')
    with pytest.raises(ValueError, match='unknown torchvision classification model'):
        WAEWrapper('torchvision:resnet19')


def test_a_torchvision_state_dict_file_converts(tmp_path):
    """``timm-wae convert FILE model.backbone=torchvision:NAME``: the network's own state_dict (.pth or
    .safetensors) is loaded strictly into the builder's network, which the converted model starts as."""
    from timm_wae.training.stages import load_network
    net = _trained('resnet18')
    save_file(net.state_dict(), str(tmp_path / 'r18.safetensors'))
    torch.save(net.state_dict(), tmp_path / 'r18.pth')
    x = torch.randn(1, 3, 64, 64)
    for file in ('r18.safetensors', 'r18.pth'):
        network = load_network(str(tmp_path / file), 'torchvision:resnet18', 10, 'model.backbone_from')
        model = WAEWrapper.from_trained(network).eval()
        with torch.no_grad():
            ref = net(F.avg_pool2d(x, 2))
            assert ((model(x) - ref).norm() / ref.norm()).item() <= 1e-4
    with pytest.raises(ValueError, match='do not fit'):
        load_network(str(tmp_path / 'r18.pth'), 'torchvision:resnet34', 10, 'model.backbone_from')


def test_convert_accepts_a_torchvision_name_with_its_weights(tmp_path, capsys):
    from PIL import Image

    from timm_wae_cli import main
    for split in ('train', 'val'):
        (tmp_path / split / 'a').mkdir(parents=True)
        Image.new('RGB', (8, 8)).save(tmp_path / split / 'a' / 'x.png')
    spec = 'torchvision:resnet50.IMAGENET1K_V2'
    assert main(['convert', spec, '--data', str(tmp_path), '--output-dir', str(tmp_path / 'out'), '--dry-run']) == 0
    assert f'model.backbone_from={spec} distill.teacher={spec}' in capsys.readouterr().err
