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

REGISTERED = sorted(set(timm.list_models(['wae_*', 'wae2_*'])))
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


def test_int8_quantization_keeps_the_decisions_and_the_folded_model_exports(tmp_path):
    """ONNX Runtime static INT8 of a trained-like WAE model (its standardisation folded first): the int8
    file runs at any batch, agrees with fp32 on most decisions, and evaluate() scores it through the
    model's own data config."""
    from PIL import Image

    from timm_wae.evaluate import evaluate
    from timm_wae.export import OnnxRuntimeModel, quantize_onnx
    torch.manual_seed(0)
    model = timm.utils.reparameterize_model(timm.create_model('wae2_resnet18', num_classes=3).eval())
    batches = [torch.randn(4, *SIZE) for _ in range(4)]
    fp32 = export_onnx(model, tmp_path / 'fp32.onnx', SIZE)
    int8 = quantize_onnx(fp32, tmp_path / 'int8.onnx', batches)
    assert int8.is_file() and int8.stat().st_size < 0.5 * fp32.stat().st_size  # int8 weights
    x = torch.randn(16, *SIZE)
    with torch.no_grad():
        reference = model(x)
    quantized = OnnxRuntimeModel(str(int8), 1, like=model)
    out = quantized(x)
    assert out.shape == reference.shape and quantized(x[:1]).shape == (1, 3)
    assert torch.corrcoef(torch.stack([out.flatten(), reference.flatten()]))[0, 1] > 0.9
    for c in ('a', 'b', 'c'):  # a tiny ImageFolder, scored through the lent data config
        (tmp_path / 'val' / c).mkdir(parents=True)
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 70, 3), dtype=np.uint8)).save(
            tmp_path / 'val' / c / 'x.png')
    row, = evaluate(quantized, tmp_path / 'val', workers=0, progress=False, img_size=64)
    assert row['count'] == 3 and 0 <= row['top1_err'] <= 100


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
