"""Figures of a WAE model's decomposition, like the paper's Figures 3 and 4.

For each image: the input, IL, IH and the reconstruction I' (optionally the 9/7 DWT's cA and details
of the same input beside them). What is computed:

* The image goes through the model's eval transform without Normalize (``x01``, in [0, 1]), then is
  normalised with the data config's mean/std (``x``), which is what the model sees.
* ``IL, IH = model.decompose(x)``: the sub-images **before** the standardising BatchNorm.
* **Energy share of IH** = sum(IH²) / (sum(IL²) + sum(IH²)) over all pixels and channels of the
  un-standardised sub-images (the quantity the transform loss pushes down).
* **Reconstruction** (``front_end.reconstruct``: the learned WAEs' decoders, the wavelets' inverse; none for
  the resize front end, which cannot) is
  de-normalised (``I' * std + mean``) and clamped to [0, 1], and its **PSNR** is
  10·log10(1 / MSE) against ``x01`` (peak 1, all channels).
* ``compare``: the single-level periodized CDF 9/7 DWT (``timm_wae.front_ends.wavelets.dwt2``) of the same
  normalised input ``x``: cA, and |cH| + |cV| + |cD| per colour channel, with the share of the
  detail bands in the total energy computed the same way.
* Display: IL, IH, cA and the details are each **min-max stretched per image** (over all their
  channels together, which keeps the colour balance) to [0, 1]; the titles say so. A sub-image with
  more than 3 channels (the 'dwt97' front end's IH) is shown as |cH|+|cV|+|cD|.

Matplotlib runs without pyplot, on the Agg canvas (no display needed).
"""
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .models.wae import is_wae_model

__all__ = ['decompose_image', 'energy_share', 'psnr', 'stretch', 'render', 'visualize']


def energy_share(low: Tensor, high: Optional[Tensor]) -> Optional[float]:
    """sum(high²) / (sum(low²) + sum(high²)); None without a high image."""
    if high is None:
        return None
    e_low, e_high = low.double().pow(2).sum(), high.double().pow(2).sum()
    total = e_low + e_high
    return float(e_high / total) if total > 0 else 0.0


def psnr(a: Tensor, b: Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images)."""
    mse = float((a.double() - b.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def stretch(t: Tensor) -> Tensor:
    """Min-max stretch of one image [C, H, W] to [0, 1] (a constant image becomes 0)."""
    t = t.double()
    lo, hi = t.min(), t.max()
    return ((t - lo) / (hi - lo)).float() if hi > lo else torch.zeros_like(t, dtype=torch.float32)


def _details_magnitude(high: Tensor, chans: int = 0) -> Tensor:
    """|cH|+|cV|+|cD| per colour channel: [3C, H, W] (pywt order per channel) -> [C, H, W]. Two Haar
    levels ([15C, H, W], ``wae4``): the second level's 3C, then the first level's 3C at 4 positions each."""
    n, h, w = high.shape
    c = chans or n // 3
    out = high[:3 * c].abs().reshape(c, 3, h, w).sum(1)
    if n > 3 * c:
        out = out + high[3 * c:].abs().reshape(c, 3, 4, h, w).sum((1, 2))
    return out


@torch.inference_mode()
def decompose_image(model: nn.Module, x01: Tensor, mean: Sequence[float], std: Sequence[float],
                    compare: bool = False) -> Dict[str, Any]:
    """Everything a figure shows for one image ``x01`` [C, H, W] in [0, 1] (see the module docstring).

    Returns the displayable panels (``input``, ``low``, ``high``, ``recon``, ``dwt_ca``, ``dwt_details``;
    [C, H, W] tensors in [0, 1], or None) and the numbers (``energy_share``, ``psnr_db``,
    ``dwt_energy_share``).
    """
    if not is_wae_model(model):
        raise ValueError('the model has no WAE front end (decompose() and a FrontEnd): visualize needs a '
                         'WAE model such as wae_resnet18 or a WAEWrapper checkpoint')
    device = next(model.parameters()).device
    from .evaluate import to_unit_range
    x01 = to_unit_range(x01.to(device))
    mean_t = torch.tensor(mean, device=device, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, device=device, dtype=torch.float32).view(-1, 1, 1)
    x = ((x01 - mean_t) / std_t)[None]  # and back: the reconstruction is shown in [0, 1]
    low, high = model.decompose(x)
    out: Dict[str, Any] = {
        'input': x01.cpu(), 'low': stretch(low[0].cpu()), 'high': None, 'recon': None,
        'dwt_ca': None, 'dwt_details': None,
        'energy_share': energy_share(low, high), 'psnr_db': None, 'dwt_energy_share': None,
        'front_end': model.model_args['front_end'], 'low_name': model.front_end.low_name,
    }
    if high is not None:
        h = high[0]
        out['high'] = stretch((_details_magnitude(h, low.shape[1]) if h.shape[0] > 3 else h).cpu())
    if model.front_end.can_reconstruct:
        recon = model.front_end.reconstruct(low, high, x.shape[-2:])
        r01 = (recon[0] * std_t + mean_t).clamp(0, 1)
        out['recon'] = r01.cpu()
        out['psnr_db'] = psnr(r01, x01)
    if compare:
        from .front_ends.wavelets import dwt2
        dwt_low, dwt_high = dwt2(x)
        out['dwt_ca'] = stretch(dwt_low[0].cpu())
        out['dwt_details'] = stretch(_details_magnitude(dwt_high[0]).cpu())
        out['dwt_energy_share'] = energy_share(dwt_low, dwt_high)
    return out


def _panels(d: Dict[str, Any], name: str) -> List[tuple]:
    """(title, image or None) for one row of the figure."""
    share = d['energy_share']
    share_txt = f'\nenergy share {100 * share:.2f}%' if share is not None else ''
    psnr_txt = ('inf' if math.isinf(d['psnr_db']) else f"{d['psnr_db']:.2f}") if d['psnr_db'] is not None else None
    panels = [
        (f'input\n{name}', d['input']),
        (f"{d['low_name']} (min-max stretched)", d['low']),
        (f'IH (min-max stretched){share_txt}' if d['high'] is not None else 'IH: none (no IH branch)', d['high']),
        (f'reconstruction\nPSNR {psnr_txt} dB' if psnr_txt else 'reconstruction: none (no decoder)', d['recon']),
    ]
    if d['dwt_ca'] is not None:
        panels += [
            ('9/7 DWT cA (min-max stretched)', d['dwt_ca']),
            (f'9/7 DWT |cH|+|cV|+|cD| (min-max)\nenergy share {100 * d["dwt_energy_share"]:.2f}%', d['dwt_details']),
        ]
    return panels


def render(rows: Sequence[tuple], path: Union[str, Path], title: Optional[str] = None, dpi: int = 100) -> Path:
    """Draw ``rows`` [(image name, decompose_image dict)] as one PNG, one row of panels per image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas for PNG

    panel_rows = [_panels(d, name) for name, d in rows]
    ncols = max(len(p) for p in panel_rows)
    fig = Figure(figsize=(2.8 * ncols, 3.1 * len(panel_rows) + (0.4 if title else 0)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panel_rows), ncols, squeeze=False)
    for r, panels in enumerate(panel_rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c >= len(panels):
                continue
            text, img = panels[c]
            ax.set_title(text, fontsize=8)
            if img is not None:
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation='nearest')
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format='png')
    return path


def visualize(
        model: nn.Module,
        images: Sequence[Union[str, Path]],
        out: Union[str, Path],
        grid: bool = False,
        compare: bool = False,
        img_size: Optional[int] = None,
        model_name: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """Write decomposition figures of ``images`` and return one row of numbers per image.

    ``out`` ending in ``.png``: one figure with a row per image. Otherwise ``out`` is a folder that
    gets ``<stem>_wae.png`` per image, or ``grid.png`` with ``grid=True``.
    Raises UnreadableImageError (an OSError) naming a file PIL cannot read, ValueError for a model
    without a WAE front end.
    """
    import timm.data

    from .evaluate import eval_transform, read_image

    if not images:
        raise ValueError('no images given')
    if not is_wae_model(model):
        raise ValueError(f'model {model_name or type(model).__name__!r} has no WAE front end (decompose() and a '
                         f'FrontEnd): visualize needs a WAE model such as wae_resnet18 or a WAEWrapper checkpoint')
    model = model.eval()
    data_config = dict(timm.data.resolve_model_data_config(model))
    if img_size:
        data_config['input_size'] = (data_config['input_size'][0], int(img_size), int(img_size))
    transform = eval_transform(data_config)
    pils = [(Path(p), read_image(p)) for p in images]  # read all first: fail before drawing anything
    decomposed = [(p, decompose_image(model, transform(img), data_config['mean'], data_config['std'], compare))
                  for p, img in pils]

    out = Path(out)
    title = model_name
    files: List[Path] = []
    if out.suffix.lower() == '.png' or grid:
        target = out if out.suffix.lower() == '.png' else out / 'grid.png'
        files = [render([(p.name, d) for p, d in decomposed], target, title)] * len(decomposed)
    else:
        used: Dict[str, int] = {}
        for p, d in decomposed:
            stem = p.stem
            used[stem] = used.get(stem, 0) + 1
            name = f'{stem}_wae.png' if used[stem] == 1 else f'{stem}_{used[stem]}_wae.png'
            files.append(render([(p.name, d)], out / name, title))
    return [{
        'image': str(p), 'file': str(f), 'front_end': d['front_end'],
        'energy_share_ih': d['energy_share'], 'psnr_db': d['psnr_db'], 'dwt_energy_share': d['dwt_energy_share'],
    } for (p, d), f in zip(decomposed, files)]
