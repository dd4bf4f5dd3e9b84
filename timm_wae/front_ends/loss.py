"""The transform loss that trains a learned front end through its decoder (the recipes' stages 1 and 3)."""
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ['TransformLoss', 'TransformLossTerms']


@dataclass
class TransformLossTerms:
    """The transform loss and its two terms, kept apart so they can be logged."""
    loss: Tensor
    recon: Tensor
    energy: Tensor


class TransformLoss(nn.Module):
    """Lt = lr + λ·le with lr = mean((I − I')²) and le = mean(IH²).

    Both terms are per-element means (independent of batch and image size, so learning rates
    transfer between resolutions). The paper writes λ = 1 on squared norms, i.e. on sums; IH has a
    quarter of I's elements, so λ = 0.25 on means gives the authors' relative weighting, and is
    the default here. λ is a training choice, not part of a model: the recipes' config holds it.
    """

    def __init__(self, energy_weight: float = 0.25):
        super().__init__()
        self.energy_weight = energy_weight

    @torch.jit.unused  # a training loss: TorchScript (inference) never needs it
    def per_sample(self, image: Tensor, recon: Tensor, high: Tensor) -> TransformLossTerms:
        """The terms of each image, [B] each (evaluation gathers them across processes)."""
        lr = (recon.float() - image.float()).pow(2).flatten(1).mean(1)
        le = high.float().pow(2).flatten(1).mean(1)
        return TransformLossTerms(lr + self.energy_weight * le, lr, le)

    @torch.jit.unused
    def forward(self, image: Tensor, recon: Tensor, high: Tensor) -> TransformLossTerms:
        """The batch's terms: the mean of ``per_sample`` (every image has as many elements)."""
        t = self.per_sample(image, recon, high)
        return TransformLossTerms(t.loss.mean(), t.recon.mean(), t.energy.mean())
