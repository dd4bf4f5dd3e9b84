"""VGG in the layout of the authors' released Caffe model (its deploy prototxt; MODEL_CARD.md).

The released IL branch is VGG's conv stack with ceil-mode pooling (pool5 is 4x4 at 112 input)
and a small head, fc 1024-1024-C; timm's own VGG head (a 7x7 conv to 4096 channels) reads 411 MB
of weights per image and would cost most of the batch-1 speed-up.
"""
import timm
from timm.layers import ClassifierHead
from timm.models.vgg import VGG
from torch import nn

from ..layers import FlatMlp

__all__ = ['released_vgg', 'ceil_mode_pooling']


def ceil_mode_pooling(model: nn.Module) -> None:
    """Every max-pool of ``model`` rounds up, as Caffe's did (an IH branch's pool5 then matches IL's 4x4)."""
    for m in model.modules():
        if isinstance(m, nn.MaxPool2d):
            m.ceil_mode = True


def released_vgg(
        arch: str,
        num_classes: int = 1000,
        head_hidden: int = 1024,
        head_kernel: int = 4,
        drop_rate: float = 0.5,
        in_chans: int = 3,
) -> VGG:
    """A timm VGG with ceil-mode pooling and the released head: fc on the flattened 4x4 pool5 map."""
    model = timm.create_model(arch, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    ceil_mode_pooling(model.features)
    model.pre_logits = FlatMlp(model.num_features, head_hidden, head_kernel, drop_rate)
    model.head = ClassifierHead(head_hidden, num_classes, drop_rate=drop_rate)
    model.head_hidden_size = head_hidden
    return model
