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


def test_new_parts_of_a_converted_model_learn_at_a_scaled_lr_and_the_trained_weights_at_the_base_lr():
    """param_groups with new_parts_lr_scale / front_end_lr_scale: the stem's IH channels and the front end step
    that many times further than under the base lr; the trained network, the stem's IL channels included,
    steps as before."""
    import timm

    from timm_wae import WAEWrapper
    from timm_wae.training.config import StageConfig
    from timm_wae.training.stages import param_groups

    def one_step(scale, fe_scale):
        torch.manual_seed(0)
        network = timm.create_model('test_resnet', num_classes=3)
        model = WAEWrapper.from_trained(network, front_end='wae2', ih_fusion='stem')
        cfg = StageConfig(lr=0.1, weight_decay=0., momentum=0., new_parts_lr_scale=scale, front_end_lr_scale=fe_scale)
        opt = torch.optim.SGD(param_groups(model, cfg, converted=True), lr=cfg.lr)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        torch.manual_seed(1)
        model(torch.randn(4, 3, 32, 32)).logsumexp(1).sum().backward()
        opt.step()
        return {n: p.detach() - before[n] for n, p in model.named_parameters()}, model

    base, model = one_step(1., 1.)
    scaled, _ = one_step(10., 3.)
    stem = f"backbone.{model.ih_readers[0]}.weight"
    il = model.front_end.low_chans
    assert base[stem][:, il:].abs().sum() > 0  # the IH channels learn at all
    torch.testing.assert_close(scaled[stem][:, il:], 10 * base[stem][:, il:])
    torch.testing.assert_close(scaled[stem][:, :il], base[stem][:, :il])
    trained = [n for n in base if n.startswith('backbone.') and n != stem and base[n].abs().sum() > 0]
    assert trained and all(torch.allclose(scaled[n], base[n], atol=1e-7) for n in trained)
    new = [n for n in base if n.startswith('front_end.') and base[n].abs().sum() > 0]
    assert new and all(torch.allclose(scaled[n], 3 * base[n], atol=1e-6) for n in new)
