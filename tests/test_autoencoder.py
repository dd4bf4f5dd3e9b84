"""The WAE itself: shapes, exact reconstruction size, the transform loss, input checks."""
import pytest
import torch
import torch.nn.functional as F

from timm_wae import TransformLoss, WaveletLikeAutoEncoder
from timm_wae.bench import count_macs
from timm_wae.front_ends import HalfResolutionWAE, QuarterResolutionWAE
from timm_wae.front_ends.wavelets import HaarDWT, haar_matrix


@pytest.mark.parametrize('size', [(32, 32), (33, 47), (17, 16)])
def test_sub_images_are_three_channel_half_resolution_and_recon_matches_input_size(size):
    wae = WaveletLikeAutoEncoder()
    x = torch.randn(2, 3, *size)
    il, ih = wae(x)
    half = tuple((s + 1) // 2 for s in size)
    assert il.shape == ih.shape == (2, 3, *half)
    assert wae.reconstruct(il, ih, size).shape == x.shape


def test_encoder_gives_the_same_result_whatever_the_memory_format():
    wae = WaveletLikeAutoEncoder().eval()
    x = torch.randn(2, 3, 24, 24)
    a = wae(x)
    b = wae(x.contiguous(memory_format=torch.channels_last))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)
        assert u.is_contiguous()


def test_decoder_sums_its_two_branches():
    wae = WaveletLikeAutoEncoder()
    il, ih = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    d = wae.decoder
    torch.testing.assert_close(wae.reconstruct(il, ih), d.from_low(il) + d.from_high(ih))


@pytest.mark.parametrize('weight', [0.0, 0.25, 1.0])
def test_transform_loss_is_mean_reconstruction_error_plus_weighted_mean_energy(weight):
    image, recon, ih = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)
    terms = TransformLoss(weight)(image, recon, ih)
    torch.testing.assert_close(terms.recon, ((image - recon) ** 2).mean())
    torch.testing.assert_close(terms.energy, (ih ** 2).mean())
    torch.testing.assert_close(terms.loss, terms.recon + weight * terms.energy)
    each = TransformLoss(weight).per_sample(image, recon, ih)  # what evaluation gathers, image by image
    torch.testing.assert_close(each.recon, ((image - recon) ** 2).mean((1, 2, 3)))
    torch.testing.assert_close(each.loss, each.recon + weight * (ih ** 2).mean((1, 2, 3)))


def test_default_energy_weight_reproduces_the_papers_lambda_one_on_sums():
    """λ=1 on sums over I and IH equals λ=0.25 on means, because IH has a quarter of I's elements."""
    image, recon, ih = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16), torch.randn(1, 3, 8, 8)
    on_sums = F.mse_loss(recon, image, reduction='sum') + 1.0 * ih.pow(2).sum()
    torch.testing.assert_close(TransformLoss()(image, recon, ih).loss * image.numel(), on_sums)


@pytest.mark.parametrize('shape, message', [
    ((2, 1, 16, 16), '3 input channels'),
    ((2, 4, 16, 16), 'got 4 channels'),
    ((3, 16, 16), '4-D'),
    ((1, 2, 3, 16, 16), '4-D'),
])
def test_bad_input_is_refused_with_a_message_naming_the_problem(shape, message):
    with pytest.raises(ValueError, match=message):
        WaveletLikeAutoEncoder()(torch.randn(*shape))


def test_integer_images_are_refused():
    with pytest.raises(TypeError, match='floating point'):
        WaveletLikeAutoEncoder()(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


# ----------------------------------------------------------------------------- the cheap WAE ('wae2')
@pytest.mark.parametrize('size', [(32, 32), (33, 47), (17, 16)])
def test_half_resolution_wae_starts_as_the_exact_haar_dwt_and_its_inverse(size):
    wae = HalfResolutionWAE(3, width=16).double()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    low, high = wae(x)
    ref_low, ref_high = HaarDWT(3).double()(x)
    assert low.shape == (2, 3, (size[0] + 1) // 2, (size[1] + 1) // 2) and high.shape[1] == 9
    torch.testing.assert_close(low, ref_low, atol=1e-12, rtol=0)
    torch.testing.assert_close(high, ref_high, atol=1e-12, rtol=0)
    torch.testing.assert_close(wae.reconstruct(low, high, size), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize('size', [(32, 32), (35, 47), (18, 13)])
def test_quarter_resolution_wae_starts_as_two_exact_haar_levels_and_their_inverse(size):
    """wae4: the cA of the cA (4x the 4x4 block mean), the second level's details of it, and the first
    level's details at a quarter of the side; the decoder inverts it exactly, odd sizes included."""
    wae = QuarterResolutionWAE(3, width=16).double()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    low, high = wae(x)
    quarter = ((size[0] + 3) // 4, (size[1] + 3) // 4)
    assert low.shape == (2, 3, *quarter) and high.shape == (2, 45, *quarter)
    haar = HaarDWT(3).double()
    padded = F.pad(x, (0, -size[1] % 4, 0, -size[0] % 4), mode='replicate')  # edge rows repeated, as pywt
    ca, details1 = haar(padded)
    ca2, details2 = haar(ca)
    torch.testing.assert_close(low, ca2, atol=1e-12, rtol=0)
    torch.testing.assert_close(low, 4 * F.avg_pool2d(padded, 4), atol=1e-12, rtol=0)
    torch.testing.assert_close(high, torch.cat([details2, F.pixel_unshuffle(details1, 2)], 1), atol=1e-12, rtol=0)
    torch.testing.assert_close(wae.reconstruct(low, high, size), x, atol=1e-12, rtol=0)
    kept = (low.pow(2).sum() + high.pow(2).sum()).detach()
    torch.testing.assert_close(kept, padded.pow(2).sum())  # orthonormal: every pixel's information kept
    m = haar_matrix(3, levels=2)
    torch.testing.assert_close(m @ m.t(), torch.eye(48, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize('cls', [HalfResolutionWAE, QuarterResolutionWAE])
def test_half_resolution_wae_learns_every_part_from_the_transform_loss(cls):
    torch.manual_seed(0)
    wae = cls(3)
    x = torch.randn(4, 3, 24, 24)
    low, high = wae(x)
    TransformLoss(0.25)(x, wae.reconstruct(low, high, x.shape[-2:]), high).loss.backward()
    # the zero-initialised last refine convs get a gradient at once; the first ones only once the
    # last are non-zero, which the analysis / synthesis matrices do not need
    for name in ('encoder.analysis.weight', 'encoder.refine.conv2.weight', 'decoder.refine.conv2.weight',
                 'decoder.synthesis.weight'):
        grad = dict(wae.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    before = wae(x)[1].pow(2).mean().item()
    opt = torch.optim.Adam(wae.parameters(), lr=1e-2)
    for _ in range(30):  # the energy term moves detail energy out of IH
        opt.zero_grad()
        low, high = wae(x)
        TransformLoss(0.25)(x, wae.reconstruct(low, high, x.shape[-2:]), high).loss.backward()
        opt.step()
    assert wae(x)[1].pow(2).mean().item() < before


def test_half_resolution_encoder_costs_under_a_quarter_of_the_papers():
    cheap = count_macs(HalfResolutionWAE(3).encoder, (3, 224, 224))
    paper = count_macs(WaveletLikeAutoEncoder(3).encoder, (3, 224, 224))
    assert cheap <= 0.25 * paper, (cheap, paper)


@pytest.mark.parametrize('cls', [HalfResolutionWAE, QuarterResolutionWAE])
def test_half_resolution_wae_refuses_bad_input_by_name(cls):
    with pytest.raises(ValueError, match='input channels'):
        cls(3)(torch.randn(1, 4, 16, 16))
    with pytest.raises(ValueError, match='4-D'):
        cls(3)(torch.randn(3, 16, 16))


@pytest.mark.parametrize('front_end', [WaveletLikeAutoEncoder, HalfResolutionWAE, QuarterResolutionWAE])
def test_learned_front_ends_hand_back_the_callers_memory_layout(front_end):
    """They compute in channels_last on CPU; a model run channels_last end to end must stay so."""
    fe = front_end().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        plain = fe(x)
        cl = fe(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(plain, cl):
        assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
        torch.testing.assert_close(a, b)


def test_encoder_branches_are_its_to_low_and_to_high_convs():
    """forward runs both stride-2 convs as one (speed); the result must be exactly theirs, gradients too."""
    from timm_wae.front_ends.autoencoder import WAEEncoder
    torch.manual_seed(0)
    enc = WAEEncoder()
    x = torch.randn(2, 3, 15, 18)
    low, high = enc(x)
    stem = enc.stem(x)
    torch.testing.assert_close(low, enc.to_low(stem))
    torch.testing.assert_close(high, enc.to_high(stem))
    (low.sum() + 2 * high.sum()).backward()
    assert enc.to_low.weight.grad.abs().sum() > 0 and enc.to_high.bias.grad[0] == pytest.approx(2 * high[:, 0].numel())


@pytest.mark.parametrize('front_end, side', [('wae2', 16), ('wae4', 8)])
def test_the_figure_shows_the_details_per_colour_and_the_start_reconstructs_exactly(front_end, side):
    """visualize: IH (9 or 45 detail channels) is shown as one magnitude per colour channel; the Haar start
    and its decoder invert exactly (the PSNR of an exact inverse), at one level and at two."""
    from timm_wae import WAEWrapper
    from timm_wae.visualize import decompose_image
    model = WAEWrapper('resnet18', front_end=front_end, ih_fusion='stem', with_decoder=True).eval()
    torch.manual_seed(0)
    d = decompose_image(model, torch.rand(3, 32, 32), (0.5,) * 3, (0.25,) * 3)
    assert d['low'].shape == (3, side, side) and d['high'].shape == (3, side, side)
    assert d['psnr_db'] > 80 and 0 < d['energy_share'] < 1
