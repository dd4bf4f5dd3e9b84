"""Top-1 / top-5 error on an ImageFolder split, clean or with Gaussian noise (the paper's Table 7).

The image goes through the model's own eval transform (``timm.data.resolve_model_data_config`` and
``timm.data.create_transform(..., is_training=False)``) *without* its Normalize step, so that noise
can be added to the image in [0, 1]; the config's mean and std are applied afterwards:

    x01   = eval_transform(image)                    # resize + centre crop, values in [0, 1]
    noisy = clamp(x01 + sqrt(V) * z, 0, 1)           # z ~ N(0, 1), V = the variance
    input = (noisy - mean) / std

Choices the paper leaves open, made here:

* ``V`` is a **variance** on the [0, 1] scale (std = sqrt(V)), as the paper states.
* The noisy image is **clamped to [0, 1]** by default, as an image saved after adding noise would be
  (the test images of the paper are images). ``clamp=False`` keeps the unclipped values.
* The noise field ``z`` of an image depends only on ``seed`` and the image's index in the dataset
  (not on batch size, workers or device), and the same ``z`` is used for every level, scaled by
  sqrt(V) ("common random numbers": differences between levels are not sampling noise).

Every image is decoded once; all noise levels are evaluated on the same batch.
"""
import math
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

__all__ = ['check_image_folder', 'per_class_subset', 'LabelMappingError', 'UnreadableImageError', 'format_rows',
           'read_image', 'eval_transform', 'to_unit_range', 'eval_folder', 'evaluate', 'label_mapping',
           'gaussian_noise']


class LabelMappingError(ValueError):
    """The folder's classes cannot be matched with the model's outputs."""


class UnreadableImageError(OSError):
    """An image file that PIL cannot decode (corrupt, truncated, or not an image)."""


def read_image(path: Union[str, Path]):
    """The image at ``path`` as an RGB PIL image; UnreadableImageError names the file otherwise."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise UnreadableImageError(f'cannot read image {str(path)!r}: {e}') from None


def eval_transform(data_config: Dict[str, Any]) -> Callable:
    """The model's eval transform (resize, centre crop, to tensor) without Normalize: float [0, 1] output.

    timm's ``normalize=False`` would also switch to a uint8 tensor (0-255), so the normalising
    transform is built and its Normalize step dropped instead.
    """
    import timm.data
    from torchvision import transforms as T
    cfg = {k: v for k, v in data_config.items()
           if k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')}
    full = timm.data.create_transform(**cfg, is_training=False)
    steps = [t for t in getattr(full, 'transforms', [full]) if not isinstance(t, T.Normalize)]
    if len(steps) == len(getattr(full, 'transforms', [full])):
        raise RuntimeError(f'no Normalize step to remove in the eval transform {full}')
    return T.Compose(steps)


# the precisions the commands and the recipes name; every one but fp32 runs under autocast
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def to_unit_range(x: Tensor) -> Tensor:
    """A float image in [0, 1] (uint8 tensors are scaled by 1/255)."""
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def normalize(x01: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(x - mean) / std per channel of images in [0, 1] ([C, H, W] or [B, C, H, W]), as a model's data config says."""
    shape = (-1, 1, 1)
    return (x01 - torch.tensor(mean, device=x01.device).view(shape)) / torch.tensor(std, device=x01.device).view(shape)


def topk_hits(logits: Tensor, target: Tensor, k: int) -> Tensor:
    """[B, k]: whether the target is the i-th best class; ``[:, :j].any(1)`` is "top-j correct"."""
    return logits.topk(k, dim=1).indices == target[:, None]


def gaussian_noise(shape: Sequence[int], seed: int, index: int) -> Tensor:
    """A standard normal field for image ``index``, reproducible from ``seed`` alone (CPU generator)."""
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index)) % (2 ** 63))
    return torch.randn(tuple(shape), generator=gen)


class _Indexed(Dataset):
    """(transformed image, target, index): the index seeds the image's noise. The transform is applied
    here, so that one scanned folder serves models with different eval transforms."""

    def __init__(self, dataset: Dataset, transform: Callable):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        img, target = self.dataset[i]
        return self.transform(img), target, i


def check_image_folder(root: Union[str, Path]) -> Path:
    """Fail with a message that names the problem: a missing root, no classes, an empty class."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'data root {str(root)!r} does not exist or is not a directory')
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f'data root {str(root)!r} has no class folders (expected ROOT/<class>/<image>)')
    for c in classes:
        if not any(has_file_allowed_extension(f.name, IMG_EXTENSIONS) for f in c.rglob('*') if f.is_file()):
            raise ValueError(f'class folder {str(c)!r} has no images ({", ".join(IMG_EXTENSIONS)})')
    return root


def per_class_subset(dataset: Dataset, max_per_class: Optional[int]) -> Dataset:
    """The first ``max_per_class`` images of each class, in file order (deterministic)."""
    if not max_per_class:
        return dataset
    seen = torch.zeros(len(dataset.classes), dtype=torch.long)
    keep = []
    for i, target in enumerate(dataset.targets):
        if seen[target] < max_per_class:
            seen[target] += 1
            keep.append(i)
    return Subset(dataset, keep)


def eval_folder(root: Union[str, Path]):
    """The ImageFolder at ``root``, checked once (:func:`check_image_folder`); pass it to
    :func:`evaluate` for several models instead of the path."""
    from torchvision.datasets import ImageFolder
    return ImageFolder(str(check_image_folder(root)), loader=read_image)


def _imagenet_synsets(model: nn.Module) -> Optional[List[str]]:
    """The WordNet ids of the model's classes when it is an ImageNet classifier, else None."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset
        subset = infer_imagenet_subset(model)
        return ImageNetInfo(subset).label_names() if subset else None
    except Exception:  # noqa: BLE001 - older timm, unknown subset: no mapping
        return None


def label_mapping(classes: Sequence[str], model: nn.Module) -> Tuple[Optional[List[int]], str]:
    """Folder class index -> model output index, and how it was decided. In this order:

    * the model's ``pretrained_cfg['label_names']`` (the recipes record their classes there) name every
      folder: each folder maps to its name's index;
    * ``num_classes == len(classes)``: the identity (the model was trained on this folder's classes,
      which ImageFolder sorts by name);
    * an ImageNet model and folder names that are its WordNet ids (e.g. Imagenette's ``n01440764``):
      each folder maps to its ImageNet index;
    * fewer folder classes than model outputs: the identity, with a warning on stderr;
    * otherwise LabelMappingError.
    The mapping is None for the identity.
    """
    num_classes = getattr(model, 'num_classes', None)
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    if names and len(names) == num_classes and all(c in names for c in classes):
        index = {n: i for i, n in enumerate(names)}
        mapping = [index[c] for c in classes]
        return (None if mapping == list(range(len(classes))) else mapping), 'label names'
    if num_classes == len(classes):
        return None, 'sorted folder index'
    synsets = _imagenet_synsets(model)
    if synsets is not None and len(synsets) == num_classes and all(c in synsets for c in classes):
        index = {s: i for i, s in enumerate(synsets)}
        return [index[c] for c in classes], 'ImageNet WordNet ids'
    if num_classes is None or len(classes) > num_classes:
        raise LabelMappingError(
            f'the data has {len(classes)} classes but the model has {num_classes} outputs, and the folder '
            f'names are neither its label names nor ImageNet WordNet ids it could be mapped by')
    print(f'warning: the data has {len(classes)} classes and the model {num_classes} outputs; '
          f'assuming folder class i (sorted by name) is model class i', file=sys.stderr)
    return None, 'sorted folder index'


def evaluate(
        model: nn.Module,
        data: Union[str, Path, Dataset],
        noise: Sequence[float] = (0.,),
        seed: int = 0,
        clamp: bool = True,
        max_per_class: Optional[int] = None,
        batch_size: int = 64,
        workers: int = 2,
        device: Union[str, torch.device] = 'cpu',
        dtype: str = 'fp32',
        img_size: Optional[int] = None,
        progress: bool = True,
        model_name: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """Top-1 and top-k error (%) of ``model`` on an ImageFolder split, one row per noise variance.

    Args:
        model: any classifier returning logits [B, num_classes] (timm model, WAEWrapper, ...).
        data: ``root/<class>/<image>`` (a path, checked by :func:`eval_folder`) or an :func:`eval_folder`.
        noise: variances V of zero-mean Gaussian noise on the [0, 1] image (0 = clean).
        seed: seeds the noise (see the module docstring: per image, independent of batching).
        clamp: clamp the noisy image to [0, 1] before normalising.
        max_per_class: evaluate only the first N images of each class (file order).
        img_size: override the data config's input size (square); None keeps the model's own.
        dtype: 'fp32' or 'bf16' / 'fp16' (autocast).
    Returns:
        one row per noise level with ``noise_var``, ``noise_std``, ``top1_err``, ``top5_err`` (in %),
        ``top1_correct``, ``top5_correct``, ``count`` (images) and the settings used. With fewer than
        5 outputs, top-5 ranks all of them (``k`` records the k used; its error is then 0).
    Raises:
        FileNotFoundError / ValueError for a bad data root, UnreadableImageError for an image PIL
        cannot read.
    """
    import timm.data

    levels = _check_levels(noise, dtype)
    dev = torch.device(device)
    data_config = dict(timm.data.resolve_model_data_config(model))
    if img_size:
        data_config['input_size'] = (data_config['input_size'][0], int(img_size), int(img_size))
    folder = data if isinstance(data, Dataset) else eval_folder(data)
    dataset = per_class_subset(folder, max_per_class)
    mapping, label_map = label_mapping(folder.classes, model)
    num_classes = getattr(model, 'num_classes', None) or 0
    k = max(1, min(5, num_classes)) if num_classes else 5
    loader = DataLoader(_Indexed(dataset, eval_transform(data_config)), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=dev.type == 'cuda', persistent_workers=False)
    model = model.eval().to(dev)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(dataset), unit='img', desc=f'eval {model_name or ""}'.strip(), file=sys.stderr,
                   leave=False)
    try:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=DTYPES[dtype], enabled=dtype != 'fp32'):
            correct1, correctk, count = _count_hits(
                model, loader, levels, torch.tensor(mapping) if mapping is not None else None, data_config, k,
                seed, clamp, dev, bar)
    finally:
        if bar is not None:
            bar.close()
    common = {
        'model': model_name or getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__),
        'data': str(folder.root)}
    settings = {'k': k, 'count': count, 'classes': len(folder.classes), 'label_map': label_map,
                'img_size': data_config['input_size'][-1], 'clamp': clamp, 'seed': seed, 'dtype': dtype}
    return [{**common, 'noise_var': var, 'noise_std': math.sqrt(var),
             'top1_err': 100.0 * (1 - correct1[j] / count), 'top5_err': 100.0 * (1 - correctk[j] / count),
             'top1_correct': correct1[j], 'top5_correct': correctk[j], **settings}
            for j, var in enumerate(levels)]


def _check_levels(noise: Sequence[float], dtype: str) -> List[float]:
    """The noise variances as floats, refused when not finite and >= 0; an unknown dtype refused by name."""
    levels = [float(v) for v in noise]
    bad = [v for v in levels if not math.isfinite(v) or v < 0]
    if bad:
        raise ValueError(f'noise variances must be finite and >= 0, got {bad}')
    if not levels:
        raise ValueError('no noise levels given')
    if dtype not in DTYPES:
        raise ValueError(f'unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}')
    return levels


def _count_hits(model: nn.Module, loader: DataLoader, levels: List[float], mapping: Optional[torch.Tensor],
                data_config: Dict[str, Any], k: int, seed: int, clamp: bool, dev: torch.device,
                bar: Any) -> Tuple[List[int], List[int], int]:
    """(top-1 hits per noise level, top-k hits per level, images seen): every batch once, each level's noise
    drawn per image (independent of batching)."""
    correct1 = [0] * len(levels)
    correctk = [0] * len(levels)
    count = 0
    for images, targets, index in loader:
        images = to_unit_range(images.to(dev, non_blocking=True))
        if mapping is not None:
            targets = mapping[targets]
        targets = targets.to(dev)
        z = None
        if any(v > 0 for v in levels):
            z = torch.stack([gaussian_noise(images.shape[1:], seed, int(i)) for i in index]).to(dev)
        for j, var in enumerate(levels):
            x = images if var == 0 else images + math.sqrt(var) * z
            if clamp and var > 0:
                x = x.clamp(0, 1)
            hit = topk_hits(model(normalize(x, data_config['mean'], data_config['std'])).float(), targets, k)
            correct1[j] += int(hit[:, 0].sum())
            correctk[j] += int(hit.any(dim=1).sum())
        count += len(targets)
        if bar is not None:
            bar.update(len(targets))
    return correct1, correctk, count


def format_rows(rows: List[Dict[str, Any]]) -> str:
    """A Markdown table of ``evaluate``'s rows."""
    lines = ['| model | noise V | std | top-1 err % | top-5 err % | images |', '|' + '---|' * 6]
    for r in rows:
        lines.append(f"| {r['model']} | {r['noise_var']:g} | {r['noise_std']:.3f} | {r['top1_err']:.2f} "
                     f"| {r['top5_err']:.2f} | {r['count']} |")
    return '\n'.join(lines)
