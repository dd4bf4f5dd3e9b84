"""The training stages' pieces that run in-process: BatchNorm recalibration before a fine-tune."""
import torch
from torch import nn

from timm_wae.training.stages import recalibrate_batchnorm


class _Objective(nn.Module):
    """A conv, a trainable BatchNorm and a frozen one (kept in eval mode, as a frozen WAE is)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.frozen = nn.BatchNorm2d(3)

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen.eval()
        return self

    def forward(self, x, y):
        return self.bn(self.conv(self.frozen(x))).mean()


def test_recalibrate_batchnorm_estimates_the_new_inputs_statistics_and_keeps_frozen_norms():
    torch.manual_seed(0)
    obj = _Objective()
    obj.bn.running_mean.fill_(5.)  # the old input's statistics
    obj.bn.running_var.fill_(9.)
    obj.frozen.running_mean.fill_(0.5)
    frozen_before = obj.frozen.running_mean.clone()
    batches = [(torch.randn(8, 3, 6, 6) * 2 + 1, torch.zeros(8)) for _ in range(4)]
    assert recalibrate_batchnorm(obj, batches) == 32
    with torch.no_grad():
        feats = torch.cat([obj.conv(obj.frozen(x)) for x, _ in batches])
    # a cumulative average of the batch means: with equal batches, the mean over all of them
    torch.testing.assert_close(obj.bn.running_mean, feats.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    per_batch_var = torch.stack([obj.conv(obj.frozen(x)).detach().var((0, 2, 3)) for x, _ in batches])
    torch.testing.assert_close(obj.bn.running_var, per_batch_var.mean(0), rtol=1e-4, atol=1e-4)
    assert obj.bn.momentum == 0.1  # restored for the fine-tune
    assert torch.equal(obj.frozen.running_mean, frozen_before)
