"""Folders saved by timm_wae 0.2 load unchanged: same keys, same outputs.

tests/data/v0.2 holds six tiny models (a narrow ``test_convnext``, 3 classes) saved by the 0.2 code with
``save_pretrained``: each learned front end ('wae', 'wae2', 'wae4'), with and without a decoder, IH into a
branch or the stem, with trained-looking statistics. ``expected.safetensors`` holds their logits and
corners of IL (and of the reconstruction) on one seeded 128 px image, computed when they were saved.
"""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from timm_wae import load_model as create_model

SAVED = Path(__file__).parent / 'data' / 'v0.2'
FOLDERS = sorted(p.name for p in SAVED.iterdir() if p.is_dir())


def test_every_learned_front_end_was_saved():
    assert FOLDERS == ['wae2_branch', 'wae2_stem_decoder', 'wae4_stem', 'wae4_stem_decoder',
                       'wae_branch', 'wae_branch_decoder']


@pytest.mark.parametrize('name', FOLDERS)
def test_a_0_2_folder_loads_with_the_same_outputs(name):
    expected = load_file(str(SAVED / 'expected.safetensors'))
    images = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    model = create_model(str(SAVED / name)).eval()
    decoder = f'{name}.recon' in expected
    assert model.front_end.can_reconstruct == decoder
    with torch.no_grad():
        out = model.forward_train(images, reconstruct=decoder)
    torch.testing.assert_close(out.logits, expected[f'{name}.logits'], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.low[..., :8, :8], expected[f'{name}.low'], rtol=1e-5, atol=1e-6)
    if decoder:
        torch.testing.assert_close(out.recon[..., :8, :8], expected[f'{name}.recon'], rtol=1e-5, atol=1e-6)


def test_the_0_2_names_in_hub_still_work_and_the_renamed_one_warns():
    from timm_wae import hub, weights
    assert (hub.save_pretrained, hub.load_weights, hub.WeightsError) == (
        weights.save_pretrained, weights.load_weights, weights.WeightsError)
    folder = str(SAVED / 'wae2_branch')
    images = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with pytest.warns(DeprecationWarning, match='timm_wae.load_model'):
        old = hub.create_model(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(old(images), create_model(folder).eval()(images))
