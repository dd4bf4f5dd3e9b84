"""A WAE model's checks of its input beyond ``check_image``: each names the problem before a shape or dtype
error deep inside the backbone (never in a trace or TorchScript, which record ops, not Python decisions)."""
import math

import torch
from torch import Tensor, nn

from ..util import model_name, share_in_words

__all__ = ['check_il_size', 'check_dtype']


def check_il_size(model: nn.Module, x: Tensor) -> None:
    """A backbone with a fixed token grid takes IL of one size, and HRNet or DLA do not run at every size
    (checked at construction): name the image size the user passed and the one that works."""
    r = model.front_end.reduction
    size = [math.ceil(s / r) for s in x.shape[-2:]]
    if size in model.failed_il_sizes:
        h, w = model.pretrained_cfg['input_size'][1:]
        raise ValueError(
            f'the backbone {model_name(model.backbone)!r} does not run on IL of {size[0]}x{size[1]} '
            f'({share_in_words(r)} '
            f'the {x.shape[-2]}x{x.shape[-1]} images passed; checked at construction): use {h}x{w} images, '
            f'or another size whose {share_in_words(r)} it runs at (HRNet and DLA: a multiple of 64 px, {r}x that in '
            f'images)')
    if model.fixed_image_size and size != [math.ceil(s / r) for s in model.fixed_image_size]:
        h, w = model.fixed_image_size
        raise ValueError(
            f'this model takes {h}x{w} images (its backbone {model_name(model.backbone)!r} has a fixed token '
            f'grid, built for IL of {model.branch_size[0]}x{model.branch_size[1]}, {share_in_words(r)} the image); got '
            f'{x.shape[-2]}x{x.shape[-1]}: resize the images to {h}x{w}, or build the model for your size '
            f"(backbone_kwargs=dict(img_size=...) with IL's size, {share_in_words(r)} the image)")


def check_dtype(model: nn.Module, x: Tensor) -> None:
    """An input of another float type than the weights (float64 images into a float32 model)
    would fail deep inside the first conv; outside autocast, say so here."""
    weight = next(model.backbone.parameters(), None)
    if weight is not None and x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f'the images are {x.dtype} but the model\'s weights are {weight.dtype}: cast the images '
                        f'(x.to({weight.dtype})) or the model (model.to({x.dtype}))')
