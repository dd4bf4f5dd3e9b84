"""Weights through every door, against a real Hub-compatible HTTP server on 127.0.0.1.

huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE when imported, so the client side
runs in subprocesses with the environment set first (tests/hub_server.py).
"""
import socket
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import timm_wae
from hub_server import HubServer, client_env, run_client
from timm_wae import load_model as create_model
from timm_wae.weights import WeightsError, load_weights, save_pretrained

REPO_ROOT = str(Path(__file__).resolve().parents[1])

PUSH_AND_LOAD = """
import timm, torch, torchvision, timm_wae
from timm_wae.hub import push_model, WeightsError
torch.manual_seed(0)
x = torch.randn(2, 3, 64, 64)
outputs = lambda m: m.eval()(x).tolist()

model = timm.create_model('wae_resnet18.imagenette')
with torch.no_grad():
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.01)
reference = outputs(model)
push_model(model, 'timm-wae/wae_resnet18.imagenette', model_card={'results': 'test push'})

by_tag = timm.create_model('wae_resnet18.imagenette', pretrained=True)
by_hf_hub = timm.create_model('hf-hub:timm-wae/wae_resnet18.imagenette', pretrained=True)
by_torchvision = torchvision.models.get_model('wae_resnet18', weights='IMAGENETTE')
by_torch_hub = torch.hub.load(repo_root, 'wae_resnet18', source='local', pretrained=True, tag='imagenette')

custom = timm_wae.WAEWrapper('regnetx_002', num_classes=3)
custom_ref = outputs(custom)
push_model(custom, 'someone/custom-wae')
custom_back = timm.create_model('hf-hub:someone/custom-wae', pretrained=True)

try:
    timm.create_model('wae_resnet50.imagenette', pretrained=True)
    missing = None
except WeightsError as e:
    missing = str(e)
with torch.no_grad():
    result = dict(
        reference=reference, by_tag=outputs(by_tag), by_hf_hub=outputs(by_hf_hub),
        by_torchvision=outputs(by_torchvision), by_torch_hub=outputs(by_torch_hub),
        hf_hub_arch=type(by_hf_hub.backbone).__name__,
        custom_ref=custom_ref, custom_back=outputs(custom_back),
        custom_backbone=custom_back.backbone.pretrained_cfg['architecture'], missing=missing,
    )
"""

FROM_CACHE = """
import time
import timm, torch, timm_wae
torch.manual_seed(0)
x = torch.randn(2, 3, 64, 64)
start = time.perf_counter()
model = timm.create_model('wae_resnet18.imagenette', pretrained=True).eval()
seconds = time.perf_counter() - start
with torch.no_grad():
    result = dict(out=model(x).tolist(), seconds=seconds)
"""

# a client script's end: call every route in `routes`, timing each refusal (HubUnavailableError, or the CLI's error)
TIME_ROUTES = """
result = {}
for name, route in routes.items():
    start = time.perf_counter()
    try:
        route()
        result[name] = dict(error=None)
    except (HubUnavailableError, CLIError) as e:
        result[name] = dict(error=str(e), type=type(e).__name__, seconds=time.perf_counter() - start)
"""


UNREACHABLE = """
import time
import timm, torchvision, timm_wae
from timm_wae import load_model as create_model
from timm_wae.hub import HubUnavailableError
from timm_wae_cli.common import CLIError
routes = {
    'timm': lambda: timm.create_model('wae_resnet18.imagenette', pretrained=True),
    'torchvision': lambda: torchvision.models.get_model('wae2_resnet18', weights='IMAGENETTE'),
    'hf-hub': lambda: create_model('hf-hub:timm-wae/wae_resnet18.imagenette'),
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_push_then_download_through_timm_hf_hub_torchvision_and_torch_hub_then_cache(tmp_path):
    hf_home = tmp_path / 'hf'
    with HubServer(tmp_path / 'hub') as server:
        res = run_client(PUSH_AND_LOAD, client_env(hf_home, server.url), repo_root=REPO_ROOT)
        assert (tmp_path / 'hub' / 'timm-wae' / 'wae_resnet18.imagenette' / 'model.safetensors').is_file()
        readme = (tmp_path / 'hub' / 'timm-wae' / 'wae_resnet18.imagenette' / 'README.md').read_text()
    for door in ('by_tag', 'by_hf_hub', 'by_torchvision', 'by_torch_hub'):
        assert res[door] == res['reference'], door
    assert res['hf_hub_arch'] == 'ResNet'
    assert res['custom_back'] == res['custom_ref'] and res['custom_backbone'] == 'regnetx_002'
    assert 'no weights for wae_resnet50' in res['missing'] and 'pretrained_cfg_overlay' in res['missing']
    assert 'the Hub answered that none are published' in res['missing']
    assert 'test push' in readme and 'wae_resnet18' in readme

    # the server is gone: the second download comes from the cache, offline or not (at once, no retries)
    cached = run_client(FROM_CACHE, client_env(hf_home, server.url, offline=True))
    assert cached['out'] == res['reference']
    cached = run_client(FROM_CACHE, client_env(hf_home, server.url, offline=False))
    assert cached['out'] == res['reference'] and cached['seconds'] < 5


@pytest.mark.slow
def test_unreachable_hub_says_so_and_how_to_use_a_local_file(tmp_path):
    env = client_env(tmp_path / 'empty-cache', f'http://127.0.0.1:{_free_port()}')
    env['HF_HUB_ETAG_TIMEOUT'] = env['HF_HUB_DOWNLOAD_TIMEOUT'] = '2'
    res = run_client(UNREACHABLE + TIME_ROUTES, env)
    for route, tag in (('timm', 'wae_resnet18.imagenette'), ('torchvision', 'wae2_resnet18.imagenette'),
                       ('hf-hub', 'timm-wae/wae_resnet18.imagenette')):
        error = res[route]['error']
        assert error and 'could not reach the Hugging Face Hub' in error, route
        assert tag in error and 'HF_HUB_OFFLINE' in error and 'pretrained_cfg_overlay=dict(file=' in error
        assert res[route]['seconds'] < 5, route  # at once, not after the Hub client's retries


# ----------------------------------------------------------------------------- local files

@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp('saved')
    model = timm.create_model('wae_resnet18', num_classes=4).eval()
    save_pretrained(model, folder, model_card={'recipe': 'three stages'})
    return model, folder


def test_saved_folder_has_the_hub_layout_and_reloads_identically(saved):
    model, folder = saved
    assert {p.name for p in folder.iterdir()} == {'config.json', 'model.safetensors', 'README.md'}
    x = torch.randn(1, 3, 64, 64)
    again = create_model(str(folder)).eval()
    via_overlay = timm.create_model('wae_resnet18', num_classes=4, pretrained=True,
                                    pretrained_cfg_overlay=dict(file=str(folder / 'model.safetensors'), num_classes=4)).eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x)) and torch.equal(via_overlay(x), model(x))
    assert 'three stages' in (folder / 'README.md').read_text()
    assert create_model(str(folder), num_classes=4).num_classes == 4
    with pytest.raises(WeightsError, match='class count differs'):
        create_model(str(folder), num_classes=6)


@pytest.mark.parametrize('route', ['registered', 'generic'])
def test_the_readme_route_loads_every_weight_or_names_the_fresh_heads(saved, route, tmp_path):
    """num_classes + pretrained_cfg_overlay(file=...) through a 1000-class default tag: timm would
    re-initialise both heads because the tag's class count differs; the file's heads fit, so they load."""
    model, folder = saved
    if route == 'generic':
        model = timm_wae.WAEWrapper('resnet18', num_classes=4).eval()
        save_pretrained(model, tmp_path / 'generic')
        folder = tmp_path / 'generic'
    name, kwargs = ('wae_resnet18', {}) if route == 'registered' else ('wae', {'backbone': 'resnet18'})
    file = dict(file=str(folder / 'model.safetensors'))
    loaded = timm.create_model(name, pretrained=True, num_classes=4, pretrained_cfg_overlay=file, **kwargs).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.warns(UserWarning, match=r"\['backbone.fc', 'fusion_head.head.fc'\] are freshly initialised for 7 "
                                         r"classes \(the file has 4\).*num_classes=4"):
        timm.create_model(name, pretrained=True, num_classes=7, pretrained_cfg_overlay=file, **kwargs)


def test_unreadable_files_are_weights_errors_without_torchs_unsafe_advice(saved, tmp_path):
    model, folder = saved
    text = tmp_path / 'notes.txt'
    text.write_text('hello\nworld\n')
    with pytest.raises(WeightsError, match="notes.txt': not a safetensors file or a torch checkpoint"):
        load_weights(model, text)
    pickled = tmp_path / 'pickled.pth'
    torch.save({'model': torch.nn.Linear(2, 2)}, pickled)
    with pytest.raises(WeightsError, match='pickled Python objects') as exc:
        load_weights(model, pickled)
    assert 'weights_only=False' not in str(exc.value)
    assert (folder / 'model.safetensors').stat().st_mode & 0o777 == 0o644
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'config.json').write_text('[1, 2]')
    with pytest.raises(WeightsError, match=r'bad/config.json must hold a JSON object'):
        create_model(str(bad))


def test_truncated_file_is_an_error_naming_the_file(saved, tmp_path):
    _, folder = saved
    broken = tmp_path / 'broken.safetensors'
    broken.write_bytes((folder / 'model.safetensors').read_bytes()[:5000])
    with pytest.raises(WeightsError, match='broken.safetensors.*truncated or corrupt'):
        load_weights(timm.create_model('wae_resnet18', num_classes=4), broken)


def test_checkpoint_of_another_architecture_or_class_count_is_refused(saved):
    _, folder = saved
    weights = str(folder / 'model.safetensors')
    with pytest.raises(WeightsError, match='do not fit wae_resnet34: .* missing'):
        load_weights(timm.create_model('wae_resnet34', num_classes=4), weights)
    with pytest.raises(WeightsError, match=r'another shape .*class count differs'):
        load_weights(timm.create_model('wae_resnet18', num_classes=7), weights)
    with pytest.raises(WeightsError, match='do not fit wae_resnet34'):
        timm.create_model('wae_resnet34', num_classes=4, pretrained=True, pretrained_cfg_overlay=dict(file=weights))


def test_missing_and_unexpected_keys_are_never_a_silent_partial_load(saved, tmp_path):
    model, _ = saved
    state = dict(model.state_dict())
    state.pop('fusion_head.head.fc.bias')
    state['extra.weight'] = torch.zeros(1)
    path = tmp_path / 'partial.safetensors'
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(WeightsError, match=r"1 missing \(e.g. \['fusion_head.head.fc.bias'\]\), 1 unexpected"):
        load_weights(timm.create_model('wae_resnet18', num_classes=4), path)


def test_int8_weights_and_onnx_files_never_load_into_a_float_model(saved, tmp_path):
    """int8 codes copied into float parameters would be a silently wrong model: refused by name."""
    model, folder = saved
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    w = state['backbone.conv1.weight']
    scale = w.abs().amax() / 127
    state['backbone.conv1.weight'] = torch.round(w / scale).to(torch.int8)  # what a quantizer stores
    path = tmp_path / 'int8.safetensors'
    save_file(state, str(path))
    fresh = timm.create_model('wae_resnet18', num_classes=4)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(WeightsError, match=r"1 integer tensors .*backbone.conv1.weight: file torch.int8 vs model "
                                           r"torch.float32.*quantized \(INT8\) weights cannot load into a float model"):
        load_weights(fresh, path)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())  # nothing half-loaded
    onnx_file = tmp_path / 'model.int8.onnx'
    onnx_file.write_bytes(b'\x08\x07onnx-ish')
    for load in (lambda: load_weights(fresh, onnx_file), lambda: create_model(str(onnx_file))):
        with pytest.raises(WeightsError, match=r"model.int8.onnx' is an ONNX file .*OnnxRuntimeModel"):
            load()


def test_legacy_pth_loads_with_weights_only_and_pickled_objects_are_refused(saved, tmp_path):
    model, _ = saved
    good = tmp_path / 'legacy.pth'
    torch.save({'state_dict': model.state_dict()}, good)
    fresh = load_weights(timm.create_model('wae_resnet18', num_classes=4), good)
    assert torch.equal(fresh.state_dict()['backbone.fc.weight'], model.state_dict()['backbone.fc.weight'])
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': model.state_dict(), 'obj': socket.socket}, evil)
    with pytest.raises(WeightsError, match='evil.pth'):
        load_weights(timm.create_model('wae_resnet18', num_classes=4), evil)


def test_wrapper_on_a_pretrained_backbone_starts_from_its_weights(tmp_path):
    source = timm.create_model('resnet18')
    path = tmp_path / 'resnet18.safetensors'
    save_file(source.state_dict(), str(path))
    backbone = timm.create_model('resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    model = timm_wae.WAEWrapper(backbone)
    for k, v in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v)
    fresh = timm_wae.WAEWrapper(timm.create_model('resnet18'))
    assert not torch.equal(fresh.ih_branch.conv1.weight, model.ih_branch.conv1.weight)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'wae_resnet9000'"):
        create_model('wae_resnet9000')


def test_torchvision_weights_describe_themselves_as_data():
    import torchvision
    enum = torchvision.models.get_model_weights('wae_resnet18')
    weights = enum.IMAGENETTE
    assert weights.meta['categories'][0] == 'tench' and len(weights.meta['categories']) == 10
    built = torchvision.models.get_model('wae_resnet18', num_classes=10)
    assert weights.meta['num_params'] == sum(p.numel() for p in built.parameters())
    assert weights.transforms().crop_size == [128]
    assert torchvision.models.get_weight('WAE_ResNet18_Weights.IMAGENETTE') is weights
    assert 'wae_vgg16' in torchvision.models.list_models()


@pytest.mark.slow
def test_import_builds_no_model():
    """torchvision's num_params is counted when asked for, not at import (issue: import cost)."""
    code = ("import timm.models, timm.models._builder as b\ncalls = []\norig = b.build_model_with_cfg\n"
            "b.build_model_with_cfg = timm.models.build_model_with_cfg = "
            "lambda *a, **k: calls.append(a[1]) or orig(*a, **k)\n"
            "import timm_wae\nresult = dict(calls=calls)")
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, '-c', code + '\nprint(__import__("json").dumps(result))'],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {'calls': []}


# ----------------------------------------------------------------------------- timm backbones' weights offline
TIMM_WEIGHTS_OFFLINE = """
import time
import torch, timm_wae
from timm_wae import WAEWrapper
from timm_wae import load_model as create_model
from timm_wae.hub import HubUnavailableError
from timm_wae_cli.common import CLIError, load_model
routes = {
    'wrapper': lambda: WAEWrapper('resnet18', pretrained_backbone=True),
    'hub': lambda: create_model('resnet50.a1_in1k'),
    'cli': lambda: load_model('resnet50.a1_in1k', pretrained=True),  # what `timm-wae eval resnet50.a1_in1k` runs
    'wae tag': lambda: create_model('wae_resnet18.imagenette'),
}
"""


@pytest.mark.slow
@pytest.mark.parametrize('offline', [True, False])
def test_timm_backbone_weights_offline_fail_at_once_naming_hf_hub_offline_and_the_local_file(offline, tmp_path):
    """WAEWrapper(pretrained_backbone=True), a timm name through timm_wae.load_model and the CLI's eval: within
    10 s, a HubUnavailableError naming HF_HUB_OFFLINE and the local-file route. With HF_HUB_OFFLINE=1 set,
    nothing is contacted and the message does not say the Hub could not be reached; the tag stays in the name."""
    env = client_env(tmp_path / 'empty-cache', f'http://127.0.0.1:{_free_port()}', offline=offline)
    env['HF_HUB_ETAG_TIMEOUT'] = env['HF_HUB_DOWNLOAD_TIMEOUT'] = '2'
    # imports take long on a busy CPU
    res = run_client(TIMM_WEIGHTS_OFFLINE + TIME_ROUTES, env, timeout=600, repo_root=REPO_ROOT)
    for route, name in (('wrapper', 'resnet18'), ('hub', 'resnet50.a1_in1k'), ('cli', 'resnet50.a1_in1k'),
                        ('wae tag', 'wae_resnet18.imagenette')):
        error = res[route]['error']
        assert error and name in error and 'HF_HUB_OFFLINE' in error, (route, error)
        assert 'pretrained_cfg_overlay=dict(file=' in error, (route, error)
        assert ('could not reach' in error) != offline, (route, error)
        assert res[route]['seconds'] < 10, route


def test_a_local_file_that_is_not_weights_is_named_with_what_it_is(tmp_path):
    """The README's local-file route, pretrained_cfg_overlay=dict(file=...): a text file, an ONNX file and a
    missing file are WeightsErrors naming the file, not errors from inside torch.load."""
    text = tmp_path / 'notes.txt'
    text.write_text('not weights\n')
    onnx = tmp_path / 'model.onnx'
    onnx.write_bytes(b'\x08\x07\x12\x07pytorch')
    cases = {text: ['notes.txt', 'not a safetensors file or a torch checkpoint'],
             onnx: ['model.onnx', 'is an ONNX file'],
             tmp_path / 'gone.safetensors': ['gone.safetensors', 'does not exist']}
    for path, expected in cases.items():
        for name in ('wae_resnet18', 'resnet18'):
            make = timm.create_model if name.startswith('wae') else \
                (lambda n, **kw: timm_wae.WAEWrapper(n, pretrained_backbone=True, backbone_kwargs=kw))
            with pytest.raises(WeightsError) as exc:
                make(name, **({'pretrained': True} if name.startswith('wae') else {}),
                     pretrained_cfg_overlay=dict(file=str(path)))
            for text_ in expected:
                assert text_ in str(exc.value), (name, str(exc.value))


def test_offline_and_unreachable_messages_say_whether_publication_could_be_checked(monkeypatch):
    """Offline or unreachable, nothing says whether weights are published under the tag: the message says so (the
    Hub's own answer, none published, is its own message: the slow push test)."""
    from huggingface_hub import constants

    from timm_wae import hub
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(hub.HubUnavailableError, match='HF_HUB_OFFLINE is set, so the Hub was not asked whether '
                                                      'weights are published for it'):
        hub.before_download('timm-wae/wae_resnet18.in1k', 'wae_resnet18.in1k')
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setitem(hub._REACHABLE, constants.ENDPOINT, False)
    with pytest.raises(hub.HubUnavailableError, match='could not reach .* so whether weights are published for it '
                                                      'is unknown'):
        hub.before_download('timm-wae/wae_resnet18.in1k', 'wae_resnet18.in1k')
