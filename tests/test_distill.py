"""Distillation from a full-resolution teacher: the loss, the teacher wrapper and its checks."""
import pytest
import timm
import torch
import torch.nn.functional as F

from timm_wae.distill import DistillationLoss, Teacher, load_teacher
from timm_wae.weights import save_pretrained


@pytest.mark.parametrize('t', [1.0, 4.0])
def test_loss_is_t_squared_kl_of_the_softened_distributions(t):
    torch.manual_seed(0)
    s, q = torch.randn(5, 10), torch.randn(5, 10)
    p_teacher = F.softmax(q / t, 1)
    manual = (p_teacher * (p_teacher.log() - F.log_softmax(s / t, 1))).sum(1).mean() * t * t
    torch.testing.assert_close(DistillationLoss(t)(s, q), manual)
    assert DistillationLoss(t)(q, q).abs().item() < 1e-6  # no loss when the student agrees


def test_gradient_reaches_the_student_only():
    s = torch.randn(4, 10, requires_grad=True)
    q = torch.randn(4, 10, requires_grad=True)
    DistillationLoss(2.0)(s, q).backward()
    assert s.grad.abs().sum() > 0 and q.grad is None


def test_mismatched_classes_and_bad_temperature_are_named():
    with pytest.raises(ValueError, match='the teacher must have the same classes'):
        DistillationLoss()(torch.randn(2, 10), torch.randn(2, 1000))
    with pytest.raises(ValueError, match='temperature must be > 0'):
        DistillationLoss(0.)


def test_teacher_stays_in_eval_and_sees_its_own_input_size():
    seen = []
    model = timm.create_model('test_resnet', num_classes=10)
    model.register_forward_pre_hook(lambda m, args: seen.append((m.training, tuple(args[0].shape[-2:]))))
    teacher = Teacher(model, (64, 64)).train()
    out = teacher(torch.randn(2, 3, 40, 40))
    assert out.shape == (2, 10) and not out.requires_grad
    assert seen == [(False, (64, 64))]


def test_load_teacher_checks_classes_and_names_an_unloadable_teacher(tmp_path):
    model = timm.create_model('test_resnet', num_classes=10)
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 48, 48))
    save_pretrained(model, tmp_path / 'teacher')
    teacher = load_teacher(str(tmp_path / 'teacher'), 10)
    assert teacher.input_size == (48, 48)
    x = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(teacher(x), model.eval()(x))  # the saved weights, not a fresh init
    with pytest.raises(ValueError, match="teacher .* has 10 classes but the data has 5"):
        load_teacher(str(tmp_path / 'teacher'), 5)
    with pytest.raises(ValueError, match="could not load the distillation teacher '.*missing'"):
        load_teacher(str(tmp_path / 'missing'), 10)
