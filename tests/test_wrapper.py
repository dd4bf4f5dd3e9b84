"""WAEWrapper on real timm models: the model contract, the quarter-width branch, the losses."""
import json

import pytest
import timm
import timm.optim
import torch
import torch.nn.functional as F
from timm.models import save_for_hf
from torch import nn

import timm_wae
from timm_wae import BackboneError, FrontEnd, ShrinkError, TransformLoss, WAEWrapper, weights

FAMILIES = [
    'vgg11', 'vgg16', 'vgg11_bn', 'vgg16_bn', 'resnet18', 'resnet50', 'resnext50_32x4d', 'seresnet50',
    'efficientnet_b0', 'mobilenetv3_large_100', 'convnext_nano', 'regnetx_002', 'densenet121',
]
X = torch.randn(2, 3, 64, 64)


def _feature_params(model: nn.Module) -> int:
    """Parameters of the layers forward_features runs (heads excluded)."""
    model.reset_classifier(0)
    names = ('pre_logits', 'head', 'fc', 'classifier', 'conv_head')
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(names))


@pytest.mark.parametrize('name', FAMILIES)
def test_wrapper_builds_a_quarter_width_branch_and_honours_the_timm_contract(name):
    model = WAEWrapper(name, num_classes=5).eval()
    with torch.no_grad():
        features = model.forward_features(X)
        logits = model(X)
        pre = model.forward_head(features, pre_logits=True)
    assert logits.shape == (2, 5)
    assert features.ndim == 4 and features.shape[1] == model.num_features
    assert pre.shape == (2, model.head_hidden_size)
    # the IH branch's widths are the backbone's divided by 4: about 1/16 of the parameters
    ratio = sum(p.numel() for p in model.ih_branch.parameters()) / _feature_params(timm.create_model(name))
    assert 1 / 40 < ratio < 1 / 8, ratio
    assert model.high_features == -(-model.low_features // 4)
    state = model.state_dict()
    assert model.pretrained_cfg['first_conv'] + '.weight' in state
    for classifier in model.pretrained_cfg['classifier']:
        assert classifier + '.weight' in state


def test_output_is_the_sum_of_both_scores_and_the_loss_is_the_sum_of_both_cross_entropies():
    model = WAEWrapper('resnet18', num_classes=4).eval()
    target = torch.tensor([0, 3])
    with torch.no_grad():
        out = model.forward_train(X)
        torch.testing.assert_close(out.logits, out.logits_low + out.logits_fused)
        torch.testing.assert_close(model(X), out.logits)
        expected = F.cross_entropy(out.logits_low, target) + F.cross_entropy(out.logits_fused, target)
        torch.testing.assert_close(model.classification_loss(out, target), expected)


def test_inference_never_runs_the_decoder_but_training_with_reconstruction_does():
    model = WAEWrapper('resnet18', num_classes=3, with_decoder=True)
    calls = []
    model.front_end.decoder.register_forward_hook(lambda *a: calls.append(1))
    model.eval()
    with torch.no_grad():
        model(X)
        model.forward_head(model.forward_features(X))
        model.forward_train(X)
    assert calls == []
    model.train()
    out = model.forward_train(X, reconstruct=True)
    assert calls == [1] and out.recon.shape == X.shape
    terms = TransformLoss(0.25)(X, out.recon, out.high)
    torch.testing.assert_close(terms.energy, out.high.pow(2).mean())


@pytest.mark.parametrize('front_end', ['wae', 'wae2', 'wae4', 'dwt97', 'haar', 'resize'])
def test_every_front_end_declares_what_it_can_do_and_reconstructs_where_it_says_so(front_end):
    model = WAEWrapper('resnet18', num_classes=3, front_end=front_end, with_decoder=True).eval()
    fe = model.front_end
    assert isinstance(fe, FrontEnd) and fe.learned == (front_end in ('wae', 'wae2', 'wae4'))
    with torch.no_grad():
        low, high = fe(X)
    assert low.shape[1] == fe.low_chans and (high is None if fe.high_chans == 0 else high.shape[1] == fe.high_chans)
    if not fe.can_reconstruct:
        with pytest.raises(NotImplementedError, match='cannot reconstruct'):
            fe.reconstruct(low, high, X.shape[-2:])
        return
    recon = fe.reconstruct(low, high, X.shape[-2:])
    assert recon.shape == X.shape
    if not fe.learned:  # the fixed wavelets invert exactly
        torch.testing.assert_close(recon, X, atol=1e-4, rtol=0)


@pytest.mark.parametrize('front_end', ['wae', 'wae2', 'wae4'])
def test_a_classifier_has_no_decoder_unless_asked_and_loads_files_that_hold_one(front_end, tmp_path):
    """forward never runs the decoder, so a plain model has none: every parameter gets a gradient from
    forward (DDP, timm's training loop). A model trained with one (with_decoder=True, config.json says
    so) reloads with it, and a file that holds a decoder (the layout before 0.3) gives the model its
    decoder rather than dropping it."""
    from timm_wae import load_model as create_model
    from timm_wae.weights import load_weights, save_pretrained
    model = WAEWrapper('resnet18', num_classes=3, front_end=front_end)
    assert not [n for n, _ in model.named_parameters() if '.decoder.' in n] and not model.front_end.can_reconstruct
    model(X).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    with pytest.raises(RuntimeError, match='has no decoder: build the model with with_decoder=True'):
        model.forward_train(X, reconstruct=True)

    trained = WAEWrapper('resnet18', num_classes=3, front_end=front_end, with_decoder=True).eval()
    with torch.no_grad():
        for p in trained.front_end.decoder.parameters():
            p.add_(0.01)  # not the init: the decoder's weights must travel
    save_pretrained(trained, tmp_path / 'm')
    assert json.loads((tmp_path / 'm' / 'config.json').read_text())['model_args']['with_decoder'] is True
    for loaded in (create_model(str(tmp_path / 'm')),  # config.json asks for it
                   load_weights(WAEWrapper('resnet18', num_classes=3, front_end=front_end), tmp_path / 'm' / 'model.safetensors')):
        loaded.eval()
        low, high = loaded.decompose(X)
        torch.testing.assert_close(loaded.front_end.reconstruct(low, high, X.shape[-2:]),
                                   trained.front_end.reconstruct(low, high, X.shape[-2:]))
    plain = WAEWrapper('resnet18', num_classes=3, front_end=front_end)
    plain.load_state_dict(trained.state_dict())  # the plain torch route too
    assert plain.front_end.can_reconstruct
    folded = timm.utils.reparameterize_model(trained)
    with pytest.raises(RuntimeError, match='inference form .* cannot reconstruct'):
        folded.forward_train(X, reconstruct=True)


# every registered model (importing timm_wae registers them)
REGISTERED = sorted(timm.list_models(list(timm_wae.models.FAMILIES)))
FAST = ('wae_resnet18', 'wae2_resnet18', 'wae4_resnet18')  # the others: the slow tier (full-size backbones)


def test_every_registered_model_is_covered():
    """The reparameterize test below runs on REGISTERED: the list must not shrink unnoticed (the fast pair included)."""
    assert set(FAST) <= set(REGISTERED)
    assert {'wae_vgg11', 'wae_vgg16', 'wae_vgg16_bn', 'wae_resnet18', 'wae_resnet34', 'wae_resnet50', 'wae2_resnet18',
            'wae2_resnet50', 'wae2_efficientnet_b0', 'wae2_mobilenetv3_large_100', 'wae4_resnet18', 'wae4_resnet50',
            'wae4_efficientnet_b0', 'wae4_mobilenetv3_large_100'} <= set(REGISTERED)


@pytest.mark.parametrize('name, kwargs', [pytest.param(n, {}, marks=() if n in FAST else pytest.mark.slow)
                                          for n in REGISTERED] + [
    ('wae', dict(backbone='efficientnet_b0', front_end=f)) for f in ('wae', 'wae2', 'wae4', 'dwt97', 'haar', 'resize')])
def test_reparameterize_model_folds_the_standardisation_and_drops_the_decoder(name, kwargs, tmp_path):
    model = timm.create_model(name, num_classes=5, with_decoder=True, **kwargs).eval()
    with torch.no_grad():
        for norm in (model.front_end.norm_low, model.front_end.norm_high):  # statistics far from (0, 1)
            if isinstance(norm, nn.BatchNorm2d):
                norm.running_mean.uniform_(-2, 2)
                norm.running_var.uniform_(0.1, 4)
        x = torch.randn(2, 3, 64, 64)
        before = model(x)
        folded = timm.utils.reparameterize_model(model)  # timm's own entry point, on a copy
        after = folded(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5 * before.abs().max().item())
    foldable = kwargs.get('front_end') != 'resize'
    assert isinstance(folded.front_end.norm_low, nn.Identity) == foldable
    assert not hasattr(folded.front_end, 'decoder') and hasattr(model.front_end, 'decoder') == model.front_end.learned
    with pytest.raises(ValueError, match='reparameterized for inference'):
        weights.save_pretrained(folded, tmp_path)
    with pytest.raises(RuntimeError, match='already in its inference form'):  # folding twice: a lost track of forms
        timm.utils.reparameterize_model(folded)


def test_weights_saved_by_timm_wae_0_1_load_with_the_front_end_renamed(tmp_path):
    """0.1 called the front end ``wae`` (keys ``wae.*``, first_conv ``wae.encoder...``) and saved λ as a
    model arg: its files still load, exactly, by every route."""
    model = timm.create_model('wae', backbone='resnet18', num_classes=3).eval()
    with torch.no_grad():
        model.front_end.encoder.stem[0].weight.mul_(1.5)  # not the init: the weights must travel
    old = {('wae.' + k[len('front_end.'):] if k.startswith('front_end.') else k): v for k, v in model.state_dict().items()}
    fresh = timm.create_model('wae', backbone='resnet18', num_classes=3).eval()
    fresh.load_state_dict(old)  # the plain torch route (the recipes' checkpoints)
    torch.testing.assert_close(fresh(X), model(X))
    save_for_hf(model, tmp_path, safe_serialization=True)
    from safetensors.torch import save_file
    save_file(old, str(tmp_path / 'model.safetensors'))
    config = json.loads((tmp_path / 'config.json').read_text())
    config['model_args']['energy_weight'] = 0.25
    config['pretrained_cfg']['first_conv'] = 'wae.encoder.stem.0'
    (tmp_path / 'config.json').write_text(json.dumps(config))
    loaded = timm_wae.load_model(str(tmp_path)).eval()  # the folder route, through hub's strict check
    torch.testing.assert_close(loaded(X), model(X))
    assert loaded.first_conv == 'front_end.encoder.stem.0'
    again = weights.load_weights(timm.create_model('wae', backbone='resnet18', num_classes=3).eval(),
                             tmp_path / 'model.safetensors')
    torch.testing.assert_close(again(X), model(X))


def test_reset_classifier_resets_both_heads():
    model = WAEWrapper('resnet18', num_classes=4).eval()
    model.reset_classifier(7)
    assert model(X).shape == (2, 7)
    assert [c.out_features for c in model.get_classifier()] == [7, 7]
    model.reset_classifier(0)
    assert model(X).shape == (2, model.head_hidden_size)


def test_timm_data_config_optimizer_and_parameter_groups_work():
    model = WAEWrapper('resnet18', num_classes=3)
    cfg = timm.data.resolve_model_data_config(model)
    assert cfg['input_size'] == (3, 224, 224) and cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN
    opt = timm.optim.create_optimizer_v2(model, 'sgd', lr=0.1, weight_decay=1e-4, layer_decay=0.7)
    in_groups = sum(p.numel() for g in opt.param_groups for p in g['params'])
    assert in_groups == sum(p.numel() for p in model.parameters())
    groups = timm.models.group_parameters(model, model.group_matcher())
    assert any(n.startswith('ih_branch.layer4') for g in groups.values() for n in g)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = WAEWrapper('resnet18', num_classes=3).train()
    target = torch.tensor([0, 2])

    def grads():
        model.zero_grad()
        model.classification_loss(model.forward_train(X), target).backward()
        return model.backbone.layer1[0].conv1.weight.grad.clone()

    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain = grads()
    model.load_state_dict(state)
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(grads(), plain)


def test_baseline_front_ends_share_the_wrapper():
    dwt = WAEWrapper('resnet18', num_classes=3, front_end='dwt97')
    assert dwt.ih_branch.conv1.in_channels == 9  # cH, cV, cD of each colour channel
    resize = WAEWrapper('resnet18', num_classes=3, front_end='resize')
    il_only = WAEWrapper('resnet18', num_classes=3, use_ih=False)
    for model in (dwt, resize, il_only):
        assert model.eval()(X).shape == (2, 3)
    assert resize.ih_branch is None and il_only.ih_branch is None
    assert il_only.num_features == il_only.low_features == 512


def test_backbone_given_as_module_keeps_its_weights_and_the_ih_branch_starts_fresh():
    backbone = timm.create_model('resnet18', num_classes=3)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = WAEWrapper(backbone)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k])
    assert model.ih_branch.conv1.weight.shape == (16, 3, 7, 7)


@pytest.mark.parametrize('shape, error, message', [
    ((2, 1, 64, 64), ValueError, '3 input channels'),
    ((2, 4, 64, 64), ValueError, 'got 4 channels'),
    ((3, 64, 64), ValueError, '4-D'),
])
def test_bad_images_fail_before_any_convolution(shape, error, message):
    model = WAEWrapper('resnet18', num_classes=3).eval()
    ran = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_pre_hook(lambda *a: ran.append(1))
    with pytest.raises(error, match=message):
        model(torch.randn(*shape))
    assert ran == []


def test_bad_backbones_and_widths_are_refused_by_name():
    with pytest.raises(BackboneError, match=r"'0' \(Conv2d\), is not a classifier"):
        WAEWrapper(nn.Sequential(nn.Conv2d(3, 8, 3)))
    for bad in (0, -4, 2.5):
        with pytest.raises(ValueError, match='width_divisor must be a positive integer'):
            WAEWrapper('resnet18', width_divisor=bad)
    with pytest.raises(ShrinkError, match="'conv1' has 64 channels"):
        WAEWrapper('resnet18', width_divisor=128)
    with pytest.raises(ShrinkError, match="'patch_embed.proj' has 192 channels"):
        WAEWrapper('vit_tiny_patch16_224', width_divisor=256)
    with pytest.raises(ValueError, match='unknown front_end'):
        WAEWrapper('resnet18', front_end='fft')


def test_registered_models_are_listed_and_wae_vgg16_has_the_released_layout():
    assert {'wae_vgg11', 'wae_vgg16', 'wae_vgg16_bn', 'wae_resnet18', 'wae_resnet34',
            'wae_resnet50'} <= set(timm.list_models('wae_*'))
    model = timm.create_model('wae_vgg16').eval()
    # the authors' released deploy prototxt has about 53.3M parameters and 4.38 GMAC (README)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 53.3) < 0.1
    assert abs(timm_wae.bench.count_macs(model, (3, 224, 224)) / 1e9 - 4.38) < 0.01
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 224, 224))
    assert features.shape == (1, 640, 4, 4)  # ceil-mode pool5 of both branches, concatenated
    assert model.backbone.pre_logits.fc1.in_features == 512 * 4 * 4
    assert model.fusion_head.pre_logits.fc1.out_features == 2048


@pytest.mark.parametrize('name', ['wae_resnet18', 'wae_vgg11', 'wae', 'wae2_resnet18', 'wae2_mobilenetv3_large_100'])
def test_registered_cfgs_name_layers_that_exist(name):
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=3)
    state = model.state_dict()
    assert model.pretrained_cfg['first_conv'] + '.weight' in state
    classifiers = model.pretrained_cfg['classifier']
    for classifier in [classifiers] if isinstance(classifiers, str) else classifiers:
        assert classifier + '.weight' in state, classifier


def test_create_model_passes_kwargs_and_cfg():
    model = timm.create_model('wae_resnet18', num_classes=10)
    assert model.num_classes == 10 and model.pretrained_cfg['architecture'] == 'wae_resnet18'
    tagged = timm.create_model('wae_resnet18.imagenette')
    assert tagged.num_classes == 10
    assert timm.data.resolve_model_data_config(tagged)['input_size'] == (3, 128, 128)
    generic = timm.create_model('wae', backbone='regnetx_002', num_classes=6)
    assert generic.backbone.pretrained_cfg['architecture'] == 'regnetx_002' and generic.num_classes == 6


# ----------------------------------------------------------------------------- wae2, haar and ih_fusion
@pytest.mark.parametrize('front_end', ['wae2', 'haar'])
def test_half_resolution_front_ends_feed_nine_detail_channels_to_either_fusion(front_end):
    branch = WAEWrapper('resnet18', num_classes=3, front_end=front_end).eval()
    assert branch.ih_branch.conv1.in_channels == 9 and branch.fusion_head is not None
    stem = WAEWrapper('resnet18', num_classes=3, front_end=front_end, ih_fusion='stem').eval()
    assert stem.ih_branch is None and stem.fusion_head is None
    assert stem.backbone.conv1.in_channels == 12  # IL's 3 channels, then IH's 9
    assert stem.num_features == stem.backbone.num_features == 512
    for model in (branch, stem):
        assert model(X).shape == (2, 3)
        assert model.forward_head(model.forward_features(X), pre_logits=True).shape == (2, model.head_hidden_size)
    assert stem.first_conv.startswith('front_end.encoder') if front_end == 'wae2' else stem.first_conv == 'backbone.conv1'


def test_stem_fusion_of_a_trained_backbone_starts_as_that_backbone_on_il():
    """The IH channels of the widened first conv are zero: converting a trained network changes
    nothing until training teaches it to use the details."""
    torch.manual_seed(0)
    backbone = timm.create_model('resnet18', num_classes=3).eval()
    reference = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = WAEWrapper(backbone, front_end='haar', ih_fusion='stem', standardize=False).eval()
    assert torch.equal(model.backbone.conv1.weight[:, 3:], torch.zeros(64, 9, 7, 7))
    low, _ = model.decompose(X)
    plain = timm.create_model('resnet18', num_classes=3).eval()
    plain.load_state_dict(reference)
    torch.testing.assert_close(model(X), plain(low))
    # and gradient reaches the new channels, so training can use them
    model.train()
    F.cross_entropy(model(X), torch.tensor([0, 1])).backward()
    assert model.backbone.conv1.weight.grad[:, 3:].abs().sum() > 0


def _trained_looking(name: str, num_classes: int = 3) -> nn.Module:
    """A timm network whose BatchNorms have statistics and affine parameters far from their init."""
    torch.manual_seed(0)
    net = timm.create_model(name, num_classes=num_classes)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval()


@pytest.mark.parametrize('front_end, reduction', [('wae2', 2), ('wae4', 4), ('haar', 2)])
@pytest.mark.parametrize('ih_fusion', ['stem', 'branch'])
def test_from_trained_starts_where_the_network_was_and_leaves_it_untouched(front_end, reduction, ih_fusion):
    """Conversion: before any training the model is the network on the r x r pooled image (IL's
    standardisation starts at the front end's gain, IH enters through zero weights or a zero-started
    fusion classifier), and the caller's module is not changed: it still takes 3 channels and runs."""
    net = _trained_looking('resnet18')
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 3, 128, 128)
    model = WAEWrapper.from_trained(net, front_end=front_end, ih_fusion=ih_fusion).eval()
    with torch.no_grad():
        out, ref = model(x), net(F.avg_pool2d(x, reduction))
    assert ((out - ref).norm() / ref.norm()).item() <= 1e-4
    assert net.conv1.in_channels == 3 and net(x).shape == (4, 3)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # and training reaches the details: the IH weights (stem) or the fusion classifier get gradients
    model.train()
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    grad = model.backbone.conv1.weight.grad[:, 3:] if ih_fusion == 'stem' else model.fusion_head.head.fc.weight.grad
    assert grad.abs().sum() > 0


def test_from_trained_refuses_what_cannot_start_where_the_network_was():
    net = _trained_looking('resnet18')
    with pytest.raises(ValueError, match="front_end='wae' .*cannot start where the network was"):
        WAEWrapper.from_trained(net, front_end='wae')
    with pytest.raises(ValueError, match='standardize=False cannot start'):
        WAEWrapper.from_trained(net, standardize=False)
    with pytest.raises(TypeError, match='converts a trained nn.Module'):
        WAEWrapper.from_trained('resnet18')


def test_stem_fusion_and_front_end_names_are_checked():
    with pytest.raises(ValueError, match="unknown ih_fusion 'late'"):
        WAEWrapper('resnet18', ih_fusion='late')
    renamed = timm.create_model('resnet18')
    renamed.pretrained_cfg = dict(renamed.pretrained_cfg, first_conv='stem.conv')  # names no layer
    with pytest.raises(ValueError, match="ih_fusion='stem' needs the backbone's first conv.*'stem.conv'"):
        WAEWrapper(renamed, front_end='haar', ih_fusion='stem')
    with pytest.raises(ValueError, match="unknown front_end 'wae3'"):
        WAEWrapper('resnet18', front_end='wae3')


def test_wae2_saves_and_reloads_with_its_fusion(tmp_path):
    from timm_wae import load_model as create_model
    from timm_wae.weights import save_pretrained
    model = WAEWrapper('resnet18', num_classes=3, front_end='wae2', ih_fusion='stem').eval()
    with torch.no_grad():
        model.front_end.encoder.refine.conv2.weight.normal_()  # not the init any more: the weights must travel
    save_pretrained(model, tmp_path / 'm')
    loaded = create_model(str(tmp_path / 'm')).eval()
    assert loaded.ih_fusion == 'stem' and loaded.model_args['front_end'] == 'wae2'
    torch.testing.assert_close(loaded(X), model(X))


def test_wae2_models_are_registered_with_their_backbones_transform_and_reload_from_a_folder(tmp_path):
    from timm_wae import load_model as create_model
    from timm_wae.weights import save_pretrained
    for prefix in ('wae2', 'wae4'):
        assert set(timm.list_models(f'{prefix}_*')) == {f'{prefix}_resnet18', f'{prefix}_resnet50',
                                                         f'{prefix}_efficientnet_b0', f'{prefix}_mobilenetv3_large_100'}
    wae4 = timm.create_model('wae4_resnet18.imagenette').eval()
    assert (wae4.model_args['front_end'], wae4.ih_fusion, wae4.backbone.conv1.in_channels) == ('wae4', 'stem', 48)
    assert wae4.feature_info[-1]['reduction'] == 128 and wae4(torch.randn(2, 3, 128, 128)).shape == (2, 10)
    model = timm.create_model('wae2_mobilenetv3_large_100.imagenette').eval()
    assert (model.model_args['front_end'], model.ih_fusion, model.num_classes) == ('wae2', 'stem', 10)
    inner = timm.models.get_pretrained_cfg('mobilenetv3_large_100')
    assert (model.pretrained_cfg['crop_pct'], model.pretrained_cfg['interpolation']) == (inner.crop_pct, inner.interpolation)
    x = torch.randn(2, 3, 128, 128)
    save_pretrained(model, tmp_path / 'm')
    torch.testing.assert_close(create_model(str(tmp_path / 'm')).eval()(x), model(x))


def test_float64_images_are_named_and_torchscript_compiles_every_front_end():
    model = timm.create_model('wae_resnet18', num_classes=3).eval()
    with pytest.raises(TypeError, match="images are torch.float64 but the model's weights are torch.float32"):
        model(X.double())
    assert model.double()(X.double()).dtype == torch.float64  # a float64 model takes float64 images
    for kwargs in ({}, dict(front_end='wae2', ih_fusion='stem'), dict(front_end='wae4', ih_fusion='stem'),
                   dict(front_end='dwt97'), dict(front_end='haar'), dict(front_end='resize')):
        model = WAEWrapper('resnet18', num_classes=3, **kwargs).eval()
        scripted = torch.jit.script(model)
        with torch.no_grad():
            torch.testing.assert_close(scripted(X), model(X))
        with pytest.raises(Exception, match='expected 3 input channels'):
            scripted(torch.randn(1, 4, 32, 32))


# ----------------------------------------------------------------------------- features_only / forward_intermediates
@pytest.mark.parametrize('name, kwargs', [('wae_resnet18', {}), ('wae2_resnet18', {}),
                                          ('wae', dict(backbone='convnext_nano')), ('wae_vgg11', {})])
def test_features_only_is_the_backbones_pyramid_at_half_resolution_with_ih_joined(name, kwargs):
    model = timm.create_model(name, num_classes=3, **kwargs).eval()
    pyramid = timm.create_model(name, features_only=True, **kwargs).eval()
    pyramid.model.load_state_dict(model.state_dict(), strict=False)  # the same weights (pyramid has no heads)
    backbone = timm.create_model(kwargs.get('backbone') or model.backbone.pretrained_cfg['architecture'],
                                 features_only=True)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        maps, plain = pyramid(x), backbone(torch.randn(2, 3, 64, 64))
        low, high = model.decompose(x)
        fe = model.front_end
        own = model.backbone.forward_intermediates(
            torch.cat([fe.norm_low(low), fe.norm_high(high)], 1) if model.ih_into_stem else fe.norm_low(low),
            intermediates_only=True, indices=len(maps))
    assert len(maps) == len(plain) == len(pyramid.feature_info.channels())
    for m, p, o, chs, red, plain_red in zip(maps, plain, own, pyramid.feature_info.channels(),
                                            pyramid.feature_info.reduction(), backbone.feature_info.reduction()):
        assert m.shape[-2:] == p.shape[-2:] and m.shape[1] == chs
        assert red == 2 * plain_red  # relative to the full-size image
        torch.testing.assert_close(m[:, :o.shape[1]], o)  # IL's map first, then the IH branch's
        assert (chs == o.shape[1]) == (model.ih_branch is None)
    final, inter = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))


# ----------------------------------------------------------------------------- every timm CNN family
WORKS = ['resnet26d', 'ghostnet_100', 'regnety_008', 'efficientnetv2_rw_t', 'mobilenetv4_conv_small', 'repvgg_a0',
         'tf_mobilenetv3_small_100', 'resnetv2_50', 'xception41', 'hrnet_w18_small', 'dla34', 'res2net50_26w_4s',
         'fastvit_t8', 'edgenext_x_small', 'cspresnet50', 'cspresnext50', 'cspdarknet53', 'mixnet_s', 'inception_v3']
REFUSED = {  # name -> what the ShrinkError must say
    'levit_128s': ['attention_biases', 'Token models'],
    'maxvit_tiny_tf_224': ['relative_position_bias_table', 'Token models'],
}


@pytest.mark.parametrize('name', WORKS)
def test_every_cnn_family_gets_a_quarter_width_ih_branch(name):
    model = WAEWrapper(name, num_classes=10).eval()
    size = 299 if name == 'inception_v3' else 128
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 10)
    backbone_feature_params = _feature_params(model.backbone)
    assert _feature_params(model.ih_branch) < 0.15 * backbone_feature_params  # about 1/16 of the weights


@pytest.mark.parametrize('name', ['vit_tiny_patch16_224',
                                  pytest.param('deit_tiny_distilled_patch16_224', marks=pytest.mark.slow)])
def test_token_models_get_a_quarter_width_branch_through_embed_dim_on_the_half_size_grid(name, tmp_path):
    model = timm.create_model('wae', backbone=name, num_classes=10).eval()
    assert model.backbone.patch_embed.img_size == (112, 112)  # built for IL: half the 224 px image
    assert model.ih_branch.embed_dim == model.backbone.embed_dim // 4
    assert timm.data.resolve_model_data_config(model)['input_size'] == (3, 224, 224)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = model.forward_train(x)
        feats = model.forward_features(x)
        pooled = model.backbone.forward_head(feats[..., :model.low_features])
        torch.testing.assert_close(out.logits_low, pooled)  # sL: the backbone's own head on IL's tokens
        torch.testing.assert_close(model(x), out.logits_low + out.logits_fused)
    assert feats.shape[-1] == model.num_features == model.backbone.embed_dim + model.ih_branch.embed_dim
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))
    save_for_hf(model, tmp_path, safe_serialization=True)
    torch.testing.assert_close(timm_wae.load_model(str(tmp_path)).eval()(x), model(x))
    pyramid = timm.create_model('wae', backbone=name, features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        maps = pyramid(x)
    assert [m.shape[1:] for m in maps] == [(model.num_features, 7, 7)] * 2
    assert pyramid.feature_info.reduction() == [32, 32]


@pytest.mark.parametrize('name', sorted(REFUSED))
def test_families_that_cannot_be_shrunk_are_refused_by_layer_and_reason(name):
    with pytest.raises(ShrinkError) as exc:
        WAEWrapper(name, num_classes=10)
    for text in REFUSED[name]:
        assert text in str(exc.value)



def test_a_cnn_layer_the_rewrite_cannot_resize_is_named_without_the_token_hint():
    class Odd(nn.Module):  # a table over the 64 channels as 8 x 8 groups: no dimension is a width
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.zeros(8, 8))

        def forward(self, x):
            b, c, h, w = x.shape
            return (x.view(b, 8, 8, h, w) * self.table[None, :, :, None, None]).view(b, c, h, w)

    class WithOdd(nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block, self.odd = block, Odd()

        def forward(self, x):
            return self.odd(self.block(x))

    backbone = timm.create_model('resnet18', num_classes=3)
    backbone.layer1[0] = WithOdd(backbone.layer1[0])
    with pytest.raises(ShrinkError) as exc:
        WAEWrapper(backbone)
    assert "layer 'layer1.0.odd' (Odd) holds table of shape (8, 8)" in str(exc.value)
    assert 'Token models' not in str(exc.value)


# ----------------------------------------------------------------------------- construction checks (issue 19)
def test_stem_mode_builds_a_fixed_grid_backbone_for_il_and_joins_nhwc_features():
    """Swin: a window grid fixed at construction and NHWC features; built for IL's grid (112 px of a 224 px
    image), checked at construction, and the first forward runs."""
    model = WAEWrapper('swin_tiny_patch4_window7_224', num_classes=5, front_end='wae2', ih_fusion='stem').eval()
    assert model.backbone.patch_embed.img_size == (112, 112) and model.channel_dim == 3
    assert model.pretrained_cfg['input_size'] == (3, 224, 224)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 5)


def test_a_fixed_grid_backbone_fed_another_size_names_the_size_the_user_passed():
    model = WAEWrapper('vit_tiny_patch16_224', num_classes=3, ih_fusion='stem', front_end='wae2').eval()
    with pytest.raises(ValueError, match=r'takes 224x224 images .*got 256x192'):
        model(torch.randn(1, 3, 256, 192))


def test_stem_mode_widens_every_branch_of_a_reparameterisable_stem():
    """MobileOne's first block reads the image through two convs (a kxk branch and a 1x1 scale branch):
    each takes the IH channels, with zero weights, so the model starts as the backbone on IL; it still folds."""
    torch.manual_seed(0)
    backbone = timm.create_model('mobileone_s0', num_classes=3).eval()
    reference = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = WAEWrapper(backbone, front_end='haar', ih_fusion='stem', standardize=False).eval()
    readers = [m for m in model.backbone.stem.modules() if isinstance(m, nn.Conv2d)]
    assert len(readers) >= 2 and all(m.in_channels == 12 for m in readers)  # the kxk and the 1x1 scale branch
    plain = timm.create_model('mobileone_s0', num_classes=3).eval()
    plain.load_state_dict(reference)
    with torch.no_grad():
        low, _ = model.decompose(X)
        torch.testing.assert_close(model(X), plain(low))
        folded = timm.utils.reparameterize_model(model)
        torch.testing.assert_close(folded(X), model(X), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name, check', [
    ('hgnetv2_b0', lambda b: b.stem.stem1.lab.scale.shape == (1,)),          # a scalar: not a width
    ('resnetblur18', lambda b: b.layer2[0].aa.filt.shape == (32, 1, 3, 3)),  # a fixed filter per channel
    ('rexnet_100', lambda b: b.features[2].in_channels == 7),  # 27 channels: a residual over part of them
    ('nf_regnet_b0', lambda b: b.stem.conv.gain.shape[0] == b.stem.conv.out_channels),  # weight-standardised
    ('fasternet_t0', lambda b: sum(getattr(b.stages[0].blocks[0].spatial_mixing, a) for a in
                                   ('dim_conv3', 'dim_untouched')) == b.stages[0].blocks[0].mlp[0].in_channels),
])
def test_the_rewrite_divides_widths_where_the_family_keeps_them(name, check):
    model = WAEWrapper(name, num_classes=10).eval()
    assert check(model.ih_branch), name
    with torch.no_grad():
        assert model(torch.randn(1, 3, *model.pretrained_cfg['input_size'][1:])).shape == (1, 10)


def test_parameters_that_do_not_scale_with_the_width_pass_unchanged():
    """skipinit_gain (shape ()) of a NormFree net: kept; the block's widths divided."""
    from dataclasses import replace

    from timm.models.nfnet import NormFreeNet, model_cfgs
    backbone = NormFreeNet(replace(model_cfgs['nf_regnet_b0'], skipinit=True), num_classes=3)
    model = WAEWrapper(backbone).eval()
    gains = [m.skipinit_gain for m in model.ih_branch.modules() if getattr(m, 'skipinit_gain', None) is not None]
    assert gains and all(g.shape == () for g in gains)
    with torch.no_grad():
        assert model(X).shape == (2, 3)


def test_a_backbone_that_needs_a_multiple_of_64_gets_an_input_size_it_runs_at():
    model = WAEWrapper('hrnet_w18_small', num_classes=4).eval()  # 224 px (IL 112) does not run; 256 px does
    assert model.pretrained_cfg['input_size'] == (3, 256, 256)
    assert timm.data.resolve_model_data_config(model)['input_size'] == (3, 256, 256)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 256, 256)).shape == (1, 4)


def test_what_fails_in_the_built_model_is_a_shrink_error_at_construction_naming_backbone_and_error():
    class ThreeOnly(nn.Module):  # a hard-coded check deep in a backbone: only IL's three channels
        def forward(self, x):
            assert x.shape[1] == 3, 'expected 3 channels'
            return x

    def backbone():
        model = timm.create_model('resnet18', num_classes=3)
        model.conv1 = nn.Sequential(ThreeOnly(), model.conv1)
        model.pretrained_cfg = dict(model.pretrained_cfg, first_conv='conv1.1')
        return model

    with pytest.raises(BackboneError) as exc:  # a layer fails in the built model: not a shrinking failure
        WAEWrapper(backbone(), front_end='wae2', ih_fusion='stem')
    assert not isinstance(exc.value, ShrinkError)
    assert "'resnet18'" in str(exc.value) and "layer 'backbone.conv1.0'" in str(exc.value)
    assert 'AssertionError: expected 3 channels' in str(exc.value)
    assert WAEWrapper(backbone()).eval()(X).shape == (2, 3)  # branch mode: IL and IH have 3 channels


def test_a_reparameterized_model_says_it_cannot_reconstruct():
    model = WAEWrapper('resnet18', num_classes=3).eval()
    folded = timm.utils.reparameterize_model(model)
    with pytest.raises(RuntimeError, match='inference form .*cannot reconstruct.*Train the unfolded model'):
        folded.forward_train(X, reconstruct=True)
    assert folded.forward_train(X).logits.shape == (2, 3)


def test_an_image_size_the_backbone_does_not_run_at_is_named_with_the_size_that_works():
    model = timm.create_model('wae', backbone='hrnet_w18_small', num_classes=4).eval()
    assert model.pretrained_cfg['input_size'] == (3, 256, 256)  # the generic entry point too
    with pytest.raises(ValueError, match=r"does not run on IL of 112x112 \(half the 224x224 images.*use 256x256"):
        model(torch.randn(1, 3, 224, 224))
