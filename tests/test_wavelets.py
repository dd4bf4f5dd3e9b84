"""The PyTorch CDF 9/7 DWT must agree with PyWavelets' bior4.4 periodization transform."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from timm_wae.front_ends.wavelets import DWT97, HaarDWT, dwt2, haar_matrix, idwt2

SHAPES = [(2, 3, 16, 16), (1, 3, 32, 48), (1, 2, 4, 6)]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def _pywt_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pywt's cA and the details laid out as documented: channel 3c+k is band k of channel c."""
    ca, bands = pywt.dwt2(x, "bior4.4", mode="periodization")
    b, c, h, w = ca.shape
    details = np.empty((b, 3 * c, h, w))
    for channel in range(c):
        for k, band in enumerate(bands):  # cH, cV, cD
            details[:, 3 * channel + k] = band[:, channel]
    return ca, details


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_dwt2_matches_pywt(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = torch.randn(shape, dtype=torch.float64)
    ref_ca, ref_details = _pywt_reference(x.numpy())
    ca, details = dwt2(x.to(dtype))
    assert ca.dtype == details.dtype == dtype
    assert ca.shape == ref_ca.shape and details.shape == ref_details.shape
    np.testing.assert_allclose(ca.double().numpy(), ref_ca, rtol=0, atol=TOLERANCE[dtype])
    np.testing.assert_allclose(details.double().numpy(), ref_details, rtol=0, atol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_idwt2_matches_pywt(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    b, c, h, w = shape
    ca = np.random.randn(b, c, h // 2, w // 2)
    bands = [np.random.randn(b, c, h // 2, w // 2) for _ in range(3)]
    ref = pywt.idwt2((ca, tuple(bands)), "bior4.4", mode="periodization")
    details = np.stack(bands, axis=2).reshape(b, 3 * c, h // 2, w // 2)
    out = idwt2(torch.from_numpy(ca).to(dtype), torch.from_numpy(details).to(dtype))
    assert out.shape == shape and out.dtype == dtype
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=0, atol=TOLERANCE[dtype])


@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip(shape: tuple[int, ...]) -> None:
    # pywt's bior4.4 taps are biorthogonal only to ~1e-12, so float64 is not exact either.
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(idwt2(*dwt2(x)), x, rtol=0, atol=1e-10)
    module = DWT97()
    torch.testing.assert_close(module.inverse(*module(x.float())), x.float(), rtol=0, atol=1e-5)


def test_module_matches_functional_and_has_no_state() -> None:
    module = DWT97()
    assert list(module.parameters()) == []
    assert list(module.state_dict()) == []
    x = torch.randn(2, 3, 8, 12)
    ca, details = module(x)
    ref_ca, ref_details = dwt2(x)
    torch.testing.assert_close(ca, ref_ca)
    torch.testing.assert_close(details, ref_details)
    torch.testing.assert_close(module.inverse(ca, details), idwt2(ref_ca, ref_details))


def test_gradients() -> None:
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dwt2(t), (x,))
    ca, details = (t.detach().requires_grad_() for t in dwt2(x.detach()))
    assert torch.autograd.gradcheck(idwt2, (ca, details))

    image = torch.randn(2, 3, 8, 8, requires_grad=True)
    ca, details = DWT97()(image)
    (ca.square().sum() + details.square().sum()).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (torch.randn(3, 16, 16), r"4-D tensor \[B, C, H, W\], got shape \[3, 16, 16\]"),
        (torch.randn(1, 3, 15, 16), r"even H and W .*H=15, W=16"),
        (torch.randn(1, 3, 16, 9), r"even H and W .*H=16, W=9"),
        (torch.randn(1, 3, 2, 16), r"at least 4.*H=2"),
        (torch.ones(1, 3, 16, 16, dtype=torch.int64), r"floating-point tensor, got dtype torch.int64"),
    ],
)
def test_dwt2_rejects_bad_input(tensor: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dwt2(tensor)


def test_idwt2_rejects_mismatched_details() -> None:
    ca = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"high must have shape .*got \[1, 6, 8, 8\]"):
        idwt2(ca, torch.randn(1, 6, 8, 8))
    with pytest.raises(ValueError, match=r"4-D tensor"):
        idwt2(ca[0], torch.randn(9, 8, 8))


@pytest.mark.parametrize('size', [(8, 8), (7, 10), (9, 5)])
def test_haar_equals_pywt_symmetric_and_inverts_exactly(size):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    dwt = HaarDWT(3).double()
    ca, details = dwt(x)
    ref_a, (ref_h, ref_v, ref_d) = pywt.dwt2(x.numpy(), 'haar', mode='symmetric')
    assert ca.shape == (2, 3, (size[0] + 1) // 2, (size[1] + 1) // 2)
    np.testing.assert_allclose(ca.numpy(), ref_a, atol=1e-12)
    for k, ref in enumerate((ref_h, ref_v, ref_d)):  # dwt2's layout: cH, cV, cD of channel c at 3c..3c+2
        np.testing.assert_allclose(details[:, k::3].numpy(), ref, atol=1e-12)
    torch.testing.assert_close(dwt.reconstruct(ca, details, size), x, atol=1e-12, rtol=0)


def test_haar_matrix_is_orthonormal_and_keeps_energy():
    m = haar_matrix(3)
    torch.testing.assert_close(m @ m.t(), torch.eye(12, dtype=torch.float64))
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    ca, details = HaarDWT(3).double()(x)
    torch.testing.assert_close(ca.pow(2).sum() + details.pow(2).sum(), x.pow(2).sum())
