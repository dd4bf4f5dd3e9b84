"""Deployment forms: ``torch.export`` programs, ONNX files with a dynamic batch dimension, INT8.

The ONNX path uses this torch version's exporter (``torch.onnx.export(dynamo=True)``), which needs
the optional ``[export]`` extra (onnx, onnxscript; onnxruntime to run the file). Both refuse a
model in training mode: BatchNorm would be exported with batch statistics and dropout active,
a silently different network. INT8 is ONNX Runtime's post-training static quantization (QDQ,
per-channel int8 weights, uint8 activations), calibrated on images the caller gives.
"""
import random
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Union

import torch
from torch import nn

__all__ = ['export_program', 'export_onnx', 'calibration_batches', 'quantize_onnx', 'OnnxRuntimeModel',
           'onnx_runtime_model']


def _example(model: nn.Module, input_size: Optional[Sequence[int]], batch: int) -> torch.Tensor:
    if model.training:
        raise ValueError('the model is in training mode: call model.eval() before exporting (BatchNorm would use '
                         'batch statistics and dropout would stay on in the exported graph)')
    size = tuple(input_size or getattr(model, 'pretrained_cfg', {}).get('input_size', (3, 224, 224)))
    p = next(model.parameters())
    return torch.randn(batch, *size, device=p.device, dtype=p.dtype)


def export_program(model: nn.Module, input_size: Optional[Sequence[int]] = None, max_batch: int = 1024):
    """A ``torch.export`` ExportedProgram of the eval-mode model, dynamic in the batch dimension."""
    x = _example(model, input_size, 2)
    batch = torch.export.Dim('batch', min=1, max=max_batch)
    return torch.export.export(model, (x,), dynamic_shapes=({0: batch},))


def export_onnx(model: nn.Module, path: Union[str, Path], input_size: Optional[Sequence[int]] = None,
                max_batch: int = 1024) -> Path:
    """Write an ONNX file of the eval-mode model (input ``images`` [batch, C, H, W], output ``logits``)."""
    x = _example(model, input_size, 2)
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(f'ONNX export needs the [export] extra: pip install "timm_wae[export]" ({e})') from None
    batch = torch.export.Dim('batch', min=1, max=max_batch)
    program = torch.onnx.export(model, (x,), dynamo=True, input_names=['images'], output_names=['logits'],
                                dynamic_shapes=({0: batch},))
    path = Path(path)
    program.save(str(path))
    return path


def calibration_batches(model: nn.Module, data: Union[str, Path, Any], n: int,
                        input_size: Optional[Sequence[int]] = None, batch: int = 32,
                        seed: int = 0) -> Iterator[torch.Tensor]:
    """``n`` images of ``data`` (an ImageFolder root, or the dataset ``eval_folder`` made of it: scan a
    folder once for several models) as a seeded sample (the same ones every run), through the model's
    eval transform at ``input_size`` (default: its data config's) and normalised as it sees them."""
    import timm.data

    from .evaluate import eval_folder, eval_transform, normalize, to_unit_range
    if n < 1:
        raise ValueError(f'calibration needs at least one image (got n={n})')
    dc = timm.data.resolve_model_data_config(model)
    if input_size is not None:
        dc['input_size'] = tuple(input_size)
    folder = eval_folder(data) if isinstance(data, (str, Path)) else data
    transform = eval_transform(dc)
    picks = random.Random(seed).sample(range(len(folder)), min(n, len(folder)))
    for i in range(0, len(picks), batch):
        x = torch.stack([transform(folder[j][0]) for j in picks[i:i + batch]])
        yield normalize(to_unit_range(x), dc['mean'], dc['std'])


def quantize_onnx(fp32_path: Union[str, Path], int8_path: Union[str, Path],
                  calibration: Iterable[torch.Tensor]) -> Path:
    """Write an INT8 copy of an ``export_onnx`` file, its activation ranges calibrated (MinMax) on the
    normalised image batches of ``calibration`` (real images: ``calibration_batches``)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = iter(calibration)
    first = next(batches, None)
    if first is None:  # ONNX Runtime would compute no ranges and fail deep inside, or write nonsense scales
        raise ValueError('quantize_onnx got no calibration batches: static INT8 needs real images to set the '
                         'activation ranges; pass calibration_batches(model, "path/to/train", n=256)')

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.pending = [first]

        def get_next(self) -> Optional[Dict[str, Any]]:
            batch = self.pending.pop() if self.pending else next(batches, None)
            return None if batch is None else {'images': batch.contiguous().numpy()}

    int8_path = Path(int8_path)
    prepared = int8_path.with_name(int8_path.stem + '.prep.onnx')  # shape inference and graph clean-up first
    try:
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(str(prepared), str(int8_path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:  # also when calibration or quantization fails: no intermediate file left beside the output
        prepared.unlink(missing_ok=True)
    return int8_path


class OnnxRuntimeModel(nn.Module):
    """An ONNX Runtime session behind a module's call, so that the bench times it and ``evaluate``
    scores it like the eager models; ``like`` lends it a model's cfg (data config, label names).

    Its threads do not spin-wait after a call (ONNX Runtime's default): spinning threads would take
    the cores from whatever runs next, e.g. the model timed after it in an interleaved bench.
    """

    def __init__(self, path: str, threads: int, like: Optional[nn.Module] = None):
        super().__init__()
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        self.session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        self.input_name = self.session.get_inputs()[0].name
        if like is not None:
            self.pretrained_cfg = dict(getattr(like, 'pretrained_cfg', {}))
            self.num_classes = getattr(like, 'num_classes', None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: x.contiguous().numpy()})[0])


def onnx_runtime_model(model: nn.Module, path: Union[str, Path], input_size: Sequence[int], threads: int,
                       calibration: Optional[Iterable[torch.Tensor]] = None,
                       like: Optional[nn.Module] = None) -> OnnxRuntimeModel:
    """A deployed form: ``model`` exported to ``path`` and run by ONNX Runtime; with ``calibration`` (normalised
    image batches: ``calibration_batches``) quantized to static INT8 first (give it the inference form,
    ``timm.utils.reparameterize_model``)."""
    onnx_file = export_onnx(model, path, input_size)
    if calibration is not None:
        onnx_file = quantize_onnx(onnx_file, onnx_file.with_suffix('.int8.onnx'), calibration)
    return OnnxRuntimeModel(str(onnx_file), threads, like=like)
