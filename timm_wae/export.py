"""Deployment exports: ``torch.export`` programs and ONNX files with a dynamic batch dimension.

The ONNX path uses this torch version's exporter (``torch.onnx.export(dynamo=True)``), which needs
the optional ``[export]`` extra (onnx, onnxscript; onnxruntime to run the file). Both refuse a
model in training mode: BatchNorm would be exported with batch statistics and dropout active,
a silently different network.
"""
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

__all__ = ['export_program', 'export_onnx']


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
