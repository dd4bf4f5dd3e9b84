"""Deployment forms: ``torch.export`` programs, ONNX files with a dynamic batch dimension, INT8.

The ONNX path uses this torch version's exporter (``torch.onnx.export(dynamo=True)``), which needs
the optional ``[export]`` extra (onnx, onnxscript; onnxruntime to run the file). Both refuse a
model in training mode: BatchNorm would be exported with batch statistics and dropout active,
a silently different network. INT8 is ONNX Runtime's post-training static quantization (QDQ,
per-channel int8 weights, uint8 activations), calibrated on images the caller gives.
"""
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Union

import torch
from torch import nn

__all__ = ['export_program', 'export_onnx', 'quantize_onnx', 'OnnxRuntimeModel']


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


def quantize_onnx(fp32_path: Union[str, Path], int8_path: Union[str, Path], calibration: Iterable[torch.Tensor]) -> Path:
    """Write an INT8 copy of an ``export_onnx`` file, its activation ranges calibrated (MinMax) on the
    normalised image batches of ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self) -> Optional[Dict[str, Any]]:
            batch = next(self.batches, None)
            return None if batch is None else {'images': batch.contiguous().numpy()}

    int8_path = Path(int8_path)
    prepared = int8_path.with_name(int8_path.stem + '.prep.onnx')  # shape inference and graph clean-up first
    quant_pre_process(str(fp32_path), str(prepared))
    quantize_static(str(prepared), str(int8_path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink()
    return int8_path


class OnnxRuntimeModel(nn.Module):
    """An ONNX Runtime session behind a module's call, so that the bench times it and ``evaluate``
    scores it like the eager models; ``like`` lends it a model's cfg (data config, label names)."""

    def __init__(self, path: str, threads: int, like: Optional[nn.Module] = None):
        super().__init__()
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        self.input_name = self.session.get_inputs()[0].name
        if like is not None:
            self.pretrained_cfg = dict(getattr(like, 'pretrained_cfg', {}))
            self.num_classes = getattr(like, 'num_classes', None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: x.contiguous().numpy()})[0])
