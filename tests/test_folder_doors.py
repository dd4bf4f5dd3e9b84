"""A saved model folder through every door timm users knock on, and what a folder may not do.

timm's own ``local-dir:`` door loads a saved WAE folder exactly; a NaN in the weights, a config.json that names
a file or a download, or a malformed config.json field is refused on every route, naming the file and the field.
"""
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import timm_wae
from timm_wae.weights import WeightsError, load_weights

SAVED = Path(__file__).parent / 'data' / 'v0.2'


@pytest.fixture(scope='module')
def wae2(tmp_path_factory):
    folder = tmp_path_factory.mktemp('wae2') / 'model'
    torch.manual_seed(0)
    model = timm.create_model('wae2_resnet18', num_classes=10).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    timm_wae.save_pretrained(model, folder)
    return model, folder


def _copy(folder: Path, tmp_path: Path, config=None, weights=None) -> Path:
    out = tmp_path / 'copy'
    shutil.copytree(folder, out)
    if config is not None:
        c = json.loads((out / 'config.json').read_text())
        config(c)
        (out / 'config.json').write_text(json.dumps(c))
    if weights is not None:
        state = load_file(str(out / 'model.safetensors'))
        weights(state)
        save_file(state, str(out / 'model.safetensors'))
    return out


def test_timm_local_dir_door_loads_a_saved_wae2_model_exactly(wae2):
    model, folder = wae2
    x = torch.randn(2, 3, 64, 64)
    loaded = timm.create_model('local-dir:' + str(folder), pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert timm_wae.save_pretrained is timm_wae.weights.save_pretrained


@pytest.mark.parametrize('name', sorted(p.name for p in SAVED.iterdir() if p.is_dir()))
def test_timm_local_dir_door_loads_the_0_2_folders(name):
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    through_timm = timm.create_model('local-dir:' + str(SAVED / name), pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(through_timm(x), timm_wae.load_model(str(SAVED / name)).eval()(x))


def test_a_10_class_model_does_not_record_the_1000_class_tag(wae2, tmp_path):
    _, folder = wae2
    assert 'tag' not in json.loads((folder / 'config.json').read_text())['pretrained_cfg']
    tagged = timm.create_model('wae2_resnet18.imagenette')
    timm_wae.save_pretrained(tagged, tmp_path / 'tagged')
    assert json.loads((tmp_path / 'tagged' / 'config.json').read_text())['pretrained_cfg']['tag'] == 'imagenette'


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_weights_are_refused_on_every_route_naming_the_file_and_tensor(wae2, tmp_path, bad):
    _, folder = wae2
    damaged = _copy(folder, tmp_path, weights=lambda s: s['backbone.layer2.0.conv1.weight'].view(-1)[7].fill_(bad))
    file = str(damaged / 'model.safetensors')
    routes = {
        'load_model': lambda: timm_wae.load_model(str(damaged)),
        'load_weights': lambda: load_weights(timm.create_model('wae2_resnet18', num_classes=10), file),
        'overlay': lambda: timm.create_model('wae2_resnet18', num_classes=10, pretrained=True,
                                             pretrained_cfg_overlay=dict(file=file)),
        'local-dir': lambda: timm.create_model('local-dir:' + str(damaged), pretrained=True),
    }
    for route, load in routes.items():
        with pytest.raises(WeightsError, match=r'non-finite .*backbone.layer2.0.conv1.weight has 1 of') as exc:
            load()
        assert str(damaged) in str(exc.value), route
        if route != 'local-dir':  # timm's door names the folder
            assert 'model.safetensors' in str(exc.value), route


FILE_FIELDS = {
    'model_args.checkpoint_path': lambda c: c['model_args'].update(checkpoint_path='/etc/hostname'),
    'model_args.pretrained_backbone': lambda c: c['model_args'].update(pretrained_backbone=True),
    'model_args.backbone_kwargs.checkpoint_path':
        lambda c: c['model_args'].update(backbone_kwargs=dict(checkpoint_path='/etc/hostname')),
    'model_args.backbone_kwargs.pretrained_cfg_overlay':
        lambda c: c['model_args'].update(backbone_kwargs=dict(pretrained_cfg_overlay=dict(file='/x'))),
    'pretrained_cfg.file': lambda c: c['pretrained_cfg'].update(file='/etc/hostname'),
    'pretrained_cfg.url': lambda c: c['pretrained_cfg'].update(url='https://example.com/w.pth'),
}


@pytest.mark.parametrize('field', FILE_FIELDS)
def test_a_config_that_names_a_file_or_a_download_is_refused_naming_the_field(wae2, tmp_path, field):
    _, folder = wae2
    bad = _copy(folder, tmp_path, config=FILE_FIELDS[field])
    with pytest.raises(WeightsError, match=rf"config.json: field '{field}' names a file or a download"):
        timm_wae.load_model(str(bad))
    if field.startswith('model_args'):  # timm's door passes the model args on; the pretrained cfg's file is its own
        with pytest.raises(WeightsError, match=rf"config.json: field '{field}' names a file or a download"):
            timm.create_model('local-dir:' + str(bad), pretrained=True)


MALFORMED = {
    'architecture': (lambda c: c.pop('architecture'), 'must name a registered model'),
    'pretrained_cfg.input_size': (lambda c: c['pretrained_cfg'].update(input_size=[3, 'big']), 'three integers'),
    'model_args': (lambda c: c.update(model_args=[3, 10]), 'must be a mapping'),
    'model_args.colour': (lambda c: c['model_args'].update(colour='red'), 'is not an argument of wae2_resnet18'),
    'num_classes': (lambda c: c.update(num_classes='ten'), "must be an integer >= 0, got 'ten'"),
    'model_args.num_classes': (lambda c: c['model_args'].update(num_classes=-3), 'must be an integer >= 0, got -3'),
    'pretrained_cfg.shoe_size': (lambda c: c['pretrained_cfg'].update(shoe_size=3), "not a field of timm's"),
    'extra': (lambda c: c.update(extra=1), 'not a field of a model config'),
}


@pytest.mark.parametrize('field', MALFORMED)
def test_a_malformed_config_field_is_the_projects_error_naming_config_json_and_the_field(wae2, tmp_path, field):
    _, folder = wae2
    edit, what = MALFORMED[field]
    bad = _copy(folder, tmp_path, config=edit)
    with pytest.raises(WeightsError, match=rf"copy/config.json: field '{field}' .*{what}"):
        timm_wae.load_model(str(bad))


def test_every_family_saved_fresh_loads_through_the_checks(tmp_path):
    """What save_pretrained writes passes the allow-list: registered names of each family, the generic wae
    with a branch, a stem, a decoder, another pooling, a Wavelet+CNN front end, and a plain timm model."""
    models = {
        'wae_vgg11': timm.create_model('wae_vgg11', num_classes=3),
        'wae4_resnet18': timm.create_model('wae4_resnet18', num_classes=3, drop_rate=0.2),
        'stem': timm_wae.WAEWrapper('test_convnext', num_classes=3, front_end='wae2', ih_fusion='stem',
                                    global_pool='max', with_decoder=True),
        'branch': timm_wae.WAEWrapper('resnet18', num_classes=3, front_end='wae', fusion_hidden=64),
        'haar': timm_wae.WAEWrapper('resnet18', num_classes=3, front_end='haar', use_ih=False),
        'plain': timm.create_model('resnet18', num_classes=3),
    }
    x = torch.randn(1, 3, 64, 64)
    for name, model in models.items():
        timm_wae.save_pretrained(model.eval(), tmp_path / name)
        with torch.no_grad():
            assert torch.equal(timm_wae.load_model(str(tmp_path / name)).eval()(x), model(x)), name


def test_the_fresh_heads_warning_names_the_file_s_class_count_when_weight_and_bias_disagree(wae2, tmp_path):
    """A file whose classifier bias fits the model but whose weight does not: the warning names the weight's count."""
    model, folder = wae2
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state['backbone.fc.weight'] = torch.zeros(4, state['backbone.fc.weight'].shape[1])
    path = tmp_path / 'odd.safetensors'
    save_file(state, str(path))
    with pytest.warns(UserWarning, match=r'the file has 4\)'):
        timm.create_model('wae2_resnet18', num_classes=10, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
