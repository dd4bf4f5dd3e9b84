"""ImageFolder data with the checks and subsetting that training and evaluation share."""
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch.utils.data import Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

__all__ = ['check_image_folder', 'image_folder', 'per_class_subset']


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


def per_class_subset(dataset: ImageFolder, max_per_class: Optional[int]) -> Union[ImageFolder, Subset]:
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


def image_folder(
        root: Union[str, Path],
        transform: Optional[Callable] = None,
        max_per_class: Optional[int] = None,
) -> Union[ImageFolder, Subset]:
    """A checked torchvision ImageFolder, optionally cut to ``max_per_class`` images per class."""
    return per_class_subset(ImageFolder(str(check_image_folder(root)), transform=transform), max_per_class)
