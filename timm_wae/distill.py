"""Knowledge distillation from a full-resolution teacher's logits (Hinton et al., 2015).

A cheaper model (a WAE model, or the same network at a lower resolution) learns from the trained
full-resolution network's soft predictions as well as from the labels. The teacher sees the
image at its own input size, so a low-resolution student's batch is resized up for it: every row
of a comparison can use the same teacher and the same loss.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['DistillationLoss', 'Teacher', 'load_teacher']


class DistillationLoss(nn.Module):
    """T² · KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch.

    The T² keeps the gradient's scale independent of the temperature, so the weight given to this
    term means the same at any T.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f'distillation temperature must be > 0, got {temperature}')
        self.temperature = temperature

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(f'student logits {tuple(student_logits.shape)} and teacher logits '
                             f'{tuple(teacher_logits.shape)} differ: the teacher must have the same classes')
        t = self.temperature
        log_p = F.log_softmax(student_logits.float() / t, dim=1)
        log_q = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
        return F.kl_div(log_p, log_q, log_target=True, reduction='batchmean') * t * t


class Teacher(nn.Module):
    """A frozen model in eval mode that resizes its input to its own size before the forward."""

    def __init__(self, model: nn.Module, input_size: Tuple[int, int]):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.input_size = tuple(input_size)

    def train(self, mode: bool = True):  # always eval: its BatchNorm statistics must not move
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode='bilinear', antialias=True, align_corners=False)
        return self.model(x)


def load_teacher(spec: str, num_classes: int, input_size: Optional[Union[int, Sequence[int]]] = None) -> Teacher:
    """The teacher from a model folder (the recipes' output), a registered name or an hf-hub id.

    Fails before any training with a message naming the teacher when it cannot be loaded or has
    another number of classes than the data.
    """
    from .model_spec import load_model
    try:
        model = load_model(spec, pretrained=True)
    except Exception as e:  # any failure to build or load: say which teacher, keep the cause
        raise ValueError(f'could not load the distillation teacher {spec!r}: {e}') from e
    if model.num_classes != num_classes:
        raise ValueError(f'distillation teacher {spec!r} has {model.num_classes} classes but the data has '
                         f'{num_classes}: the teacher must be trained on the same classes')
    if input_size is None:
        input_size = model.pretrained_cfg.get('input_size', (3, 224, 224))[-2:]
    elif isinstance(input_size, int):
        input_size = (input_size, input_size)
    return Teacher(model, tuple(input_size))
