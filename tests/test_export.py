"""Deployment paths on every registered model: torch.export, ONNX through ONNX Runtime, torch.compile.

ONNX needs the [export] extra (onnx, onnxscript, onnxruntime), which .ci/run installs.
"""
import numpy as np
import pytest
import timm
import torch

import timm_wae  # noqa: F401  (registers the models)
from timm_wae.export import export_onnx, export_program

pytestmark = pytest.mark.slow  # the slow tier: pytest -m slow

REGISTERED = sorted(set(timm.list_models(list(timm_wae.models.FAMILIES))))
SIZE = (3, 64, 64)


def test_every_registered_model_is_covered():
    assert {'wae_vgg16', 'wae_resnet50', 'wae2_resnet18', 'wae2_mobilenetv3_large_100'} <= set(REGISTERED)


@pytest.mark.parametrize('name', REGISTERED + ['wae'])
def test_export_and_onnx_runtime_match_pytorch_at_any_batch(name, tmp_path):
    torch.manual_seed(0)
    kwargs = dict(backbone='regnetx_002', front_end='haar') if name == 'wae' else {}
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    x = torch.randn(3, *SIZE)  # a batch size the example input (2) did not have
    with torch.no_grad():
        reference = model(x)
        torch.testing.assert_close(export_program(model, SIZE).module()(x), reference)
    import onnxruntime as ort  # the [export] extra; imported here so the fast tier collects without it
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / f'{name}.onnx', SIZE)),
                                   providers=['CPUExecutionProvider'])
    for batch in (1, 3):
        out = session.run(['logits'], {'images': x[:batch].numpy()})[0]
        np.testing.assert_allclose(out, reference[:batch].numpy(), rtol=1e-4, atol=1e-4)


def test_torch_compile_matches_eager():
    model = timm.create_model('wae2_resnet18', num_classes=10).eval()
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x), model(x), rtol=1e-4, atol=1e-4)


def test_a_model_in_training_mode_is_refused(tmp_path):
    model = timm.create_model('wae_resnet18', num_classes=10)
    for export in (lambda: export_program(model, SIZE), lambda: export_onnx(model, tmp_path / 'm.onnx', SIZE)):
        with pytest.raises(ValueError, match=r'training mode: call model.eval\(\)'):
            export()


def test_jit_trace_records_no_python_shape_checks(recwarn):
    for kwargs in ({}, dict(front_end='wae2', ih_fusion='stem'), dict(front_end='dwt97'), dict(front_end='haar')):
        model = timm_wae.WAEWrapper('resnet18', num_classes=3, **kwargs).eval()
        traced = torch.jit.trace(model, torch.randn(2, *SIZE))
        x = torch.randn(5, *SIZE)
        with torch.no_grad():
            torch.testing.assert_close(traced(x), model(x))
    tracer = [w for w in recwarn if issubclass(w.category, torch.jit.TracerWarning)]
    assert not tracer, [str(w.message) for w in tracer]


def _write_images(root, per_class, seed):
    """Distinct smooth images, every one its own (seeded by split, class and index); each class has its own
    dominant colour, so that a classifier can tell the classes apart."""
    from PIL import Image
    for c, name in enumerate(('a', 'b', 'c')):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            grid = np.random.default_rng([seed, c, i]).integers(0, 128, (9, 9, 3))
            grid[..., c] += 127
            Image.fromarray(grid.astype(np.uint8)).resize((70, 70), Image.BILINEAR).save(root / name / f'{i}.png')


def _images(model, root):
    """The folder's images as the model sees them at SIZE (its eval transform, normalised), and their labels."""
    from timm_wae.evaluate import eval_folder, eval_transform, to_unit_range
    cfg = dict(timm.data.resolve_model_data_config(model), input_size=SIZE)
    mean, std = torch.tensor(cfg['mean']).view(1, -1, 1, 1), torch.tensor(cfg['std']).view(1, -1, 1, 1)
    folder, transform = eval_folder(root), eval_transform(cfg)
    x = torch.stack([transform(img) for img, _ in folder])
    return (to_unit_range(x) - mean) / std, torch.tensor(folder.targets)


def test_int8_quantization_keeps_the_decisions_and_the_folded_model_exports(tmp_path):
    """ONNX Runtime static INT8 of a trained-like WAE model (its standardisation folded first, its classifier
    fitted to three classes of distinct images: nearest class mean on its pre-logits, so that its decisions
    have margins), calibrated on other images of the same classes: the int8 file runs at any batch, takes every
    decision the fp32 model takes on the held-out images with its logits well within the fp32 margins, and
    evaluate() scores it through the model's own data config."""
    from timm_wae.evaluate import evaluate
    from timm_wae.export import OnnxRuntimeModel, calibration_batches, quantize_onnx
    torch.manual_seed(0)
    model = timm.utils.reparameterize_model(timm.create_model('wae2_resnet18', num_classes=3).eval())
    _write_images(tmp_path / 'train', 4, seed=1)
    _write_images(tmp_path / 'val', 8, seed=0)
    train, train_labels = _images(model, tmp_path / 'train')
    with torch.no_grad():  # the classifier "trained": nearest class mean of the training images' pre-logits
        features = model.forward_head(model.forward_features(train), pre_logits=True)
        means = torch.stack([features[train_labels == c].mean(0) for c in range(3)])
        centre, fc = features.mean(0), model.get_classifier()
        fc.weight.copy_(means - centre)
        fc.bias.copy_(-((means - centre) * (means + centre)).sum(1) / 2)
    val, labels = _images(model, tmp_path / 'val')
    with torch.no_grad():
        val_ref = model(val)
    assert (val_ref.argmax(1) == labels).all()  # the fp32 model tells the three classes apart: a real test
    fp32 = export_onnx(model, tmp_path / 'fp32.onnx', SIZE)
    int8 = quantize_onnx(fp32, tmp_path / 'int8.onnx', calibration_batches(model, tmp_path / 'train', 12, SIZE))
    assert int8.is_file() and int8.stat().st_size < 0.5 * fp32.stat().st_size  # int8 weights
    x = torch.randn(16, *SIZE)
    with torch.no_grad():
        reference = model(x)
    quantized = OnnxRuntimeModel(str(int8), 1, like=model)
    out = quantized(x)
    assert out.shape == reference.shape and quantized(x[:1]).shape == (1, 3)
    assert torch.corrcoef(torch.stack([out.flatten(), reference.flatten()]))[0, 1] > 0.9
    # the decisions on the 24 distinct held-out images: every one kept, and the logits within a quarter of the
    # median fp32 margin (top-1 minus top-2; the smallest margin depends on the random network's draw: one image
    # can sit near a tie). Calibrating on the images scaled by 0.01 (every decision class 0) or by 20 (clipped
    # ranges) fails, as does calibrating on Gaussian noise instead of images
    val_out = quantized(val)
    margins = val_ref.topk(2, dim=1).values
    margin = (margins[:, 0] - margins[:, 1]).median()
    assert (val_out.argmax(1) == val_ref.argmax(1)).float().mean() == 1.0, (val_out.argmax(1), val_ref.argmax(1))
    assert (val_out - val_ref).abs().max() < 0.25 * margin, ((val_out - val_ref).abs().max(), margin)
    row, = evaluate(quantized, tmp_path / 'val', workers=0, progress=False, img_size=64)
    assert row['count'] == 24 and row['top1_correct'] == int((val_out.argmax(1) == labels).sum()) == 24
    assert row['top1_err'] == 0


def test_quantizing_needs_calibration_images(tmp_path):
    from timm_wae.export import calibration_batches, quantize_onnx
    model = timm.create_model('wae2_resnet18', num_classes=3).eval()
    fp32 = export_onnx(model, tmp_path / 'fp32.onnx', SIZE)
    with pytest.raises(ValueError, match='no calibration batches: static INT8 needs real images'):
        quantize_onnx(fp32, tmp_path / 'int8.onnx', [])
    assert not (tmp_path / 'int8.onnx').exists()
    with pytest.raises(ValueError, match='at least one image'):
        next(calibration_batches(model, tmp_path, 0))
    with pytest.raises(FileNotFoundError, match='nowhere'):
        next(calibration_batches(model, tmp_path / 'nowhere', 8))
