"""The training recipe's data: ImageFolder splits, fast on few CPU cores, timm's named datasets (WebDataset
shards, Hugging Face datasets: ``timm.data.create_dataset``), and the run's datasets and loader.

A decoded-image cache (``cached_image_folder``: every
image decoded once into one uint8 array on disk, memory-mapped), augmentations that run on uint8
tensors (``tensor_transform``), and per-sample seeded augmentation (``SeededBatchSampler`` +
``SeededTransform``) that makes the data of every epoch a pure function of (seed, epoch), whatever
the number of processes or workers, and lets a resumed run skip the batches it already did.
"""
import hashlib
import json
import math
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import timm.data
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, Subset
from torchvision.datasets import ImageFolder

from ..evaluate import check_image_folder, per_class_subset, read_image
from . import resolve
from .config import check_paths

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .config import Config, DataConfig

__all__ = ['image_folder', 'default_cache_dir', 'DecodedImageFolder', 'cached_image_folder', 'tensor_transform',
           'seeded_rng', 'SeededBatchSampler', 'SeededTransform', 'loader_throughput', 'dataset_classes',
           'model_data_config', 'synthetic_image_folder', 'data_root', 'TrainStream', 'timm_datasets', 'build_datasets',
           'train_loader', 'epoch_steps', 'start_epoch', 'loader_stats']


def image_folder(
        root: Union[str, Path],
        transform: Optional[Callable] = None,
        max_per_class: Optional[int] = None,
) -> Union[ImageFolder, Subset]:
    """A checked torchvision ImageFolder, optionally cut to ``max_per_class`` images per class."""
    return per_class_subset(ImageFolder(str(check_image_folder(root)), transform=transform, loader=read_image),
                            max_per_class)


def dataset_classes(dataset: Union[Dataset, Subset]) -> List[str]:
    """The class names of an ImageFolder-like dataset, through any Subset wrapping."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return list(dataset.classes)


# ------------------------------------------------------------------------------ decoded-image cache
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """$TIMM_WAE_CACHE, else $XDG_CACHE_HOME/timm_wae/decoded (~/.cache/timm_wae/decoded)."""
    if os.environ.get('TIMM_WAE_CACHE'):
        return Path(os.environ['TIMM_WAE_CACHE'])
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'timm_wae' / 'decoded'


class DecodedImageFolder(Dataset):
    """Images decoded once into a uint8 array [N, 3, S, S] (memory-mapped), with their targets.

    Items are ``(transform(uint8 tensor [3, S, S]), target)``. ``classes``, ``targets`` and
    ``samples`` follow torchvision's ImageFolder, so ``per_class_subset`` works on it.
    """

    def __init__(self, images: np.ndarray, samples: List[Tuple[str, int]], classes: List[str],
                 transform: Optional[Callable] = None):
        if len(images) != len(samples):
            raise ValueError(f'decoded cache holds {len(images)} images for {len(samples)} files')
        self.images = images
        self.samples = samples
        self.targets = [t for _, t in samples]
        self.classes = classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        img = torch.from_numpy(np.array(self.images[index]))  # copy out of the read-only memmap
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


class _DecodeResize(Dataset):
    """Decode, resize the shorter side to ``size`` and centre-crop a square: uint8 [3, size, size]."""

    def __init__(self, paths: Sequence[str], size: int, interpolation: str):
        self.paths, self.size, self.interpolation = list(paths), size, interpolation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF
        img = read_image(self.paths[i])  # a corrupt file is an error naming it
        img = TF.center_crop(TF.resize(img, self.size, InterpolationMode(self.interpolation)), [self.size, self.size])
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())


def cached_image_folder(
        root: Union[str, Path],
        size: int,
        cache_dir: Union[str, Path, None] = None,
        max_per_class: Optional[int] = None,
        transform: Optional[Callable] = None,
        interpolation: str = 'bicubic',
        workers: int = 0,
) -> DecodedImageFolder:
    """``image_folder(root, max_per_class=...)`` decoded once, resized (shorter side ``size``, centre
    square) into ``cache_dir/<name>-<key>.npy``, then memory-mapped on every later call.

    The key hashes the resolved root, size, interpolation and every selected file's path, size
    and mtime: a changed folder makes a new cache. The array and its JSON sidecar are written to
    temporary names and moved into place with ``os.replace`` (the sidecar last), so a killed
    build leaves no cache that looks complete. Non-square images lose their sides (centre square).
    """
    folder = image_folder(root, max_per_class=max_per_class)
    base, indices = (folder.dataset, folder.indices) if isinstance(folder, Subset) else (folder, range(len(folder)))
    root = Path(base.root).resolve()
    samples = [base.samples[i] for i in indices]
    files = []
    for path, target in samples:
        st = os.stat(path)
        files.append([os.path.relpath(path, root), st.st_size, st.st_mtime_ns, target])
    key = hashlib.sha1(json.dumps(
        {'format': CACHE_FORMAT, 'root': str(root), 'size': size, 'interpolation': interpolation, 'files': files},
        sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    stem = cache_dir / f'{root.parent.name}_{root.name}-{size}px-{len(samples)}-{key}'
    array_file, meta_file = stem.with_suffix('.npy'), stem.with_suffix('.json')
    rel_samples = [(f[0], f[3]) for f in files]
    if not (meta_file.is_file() and array_file.is_file()):
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = stem.with_name(f'{stem.name}.tmp{os.getpid()}.npy')
        out = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.uint8, shape=(len(samples), 3, size, size))
        loader = DataLoader(_DecodeResize([p for p, _ in samples], size, interpolation), batch_size=64,
                            num_workers=workers)
        try:
            pos = 0
            for batch in loader:
                out[pos:pos + len(batch)] = batch.numpy()
                pos += len(batch)
            out.flush()
            del out
            os.replace(tmp, array_file)
        finally:  # a corrupt image (or a kill signal Python sees) leaves no partial array behind
            tmp.unlink(missing_ok=True)
        meta = {'format': CACHE_FORMAT, 'root': str(root), 'size': size, 'interpolation': interpolation,
                'classes': base.classes, 'samples': rel_samples}
        tmp_meta = meta_file.with_name(f'{meta_file.name}.tmp{os.getpid()}')
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, meta_file)
    meta = json.loads(meta_file.read_text())
    images = np.load(array_file, mmap_mode='r')
    return DecodedImageFolder(images, [(str(root / p), t) for p, t in meta['samples']], meta['classes'], transform)


def tensor_transform(
        input_size: Union[int, Sequence[int]],
        is_training: bool = False,
        scale: Tuple[float, float] = (0.08, 1.0),
        ratio: Tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        color_jitter: float = 0.,
        interpolation: str = 'bilinear',
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        crop_pct: float = 0.875,
) -> Callable:
    """timm's train / eval transform for uint8 image tensors [3, H, W] (torchvision.transforms.v2).

    Training: random-resized crop, horizontal flip, optional colour jitter; eval: resize the shorter
    side to ``floor(size / crop_pct)`` (a no-op on a cache made at that size) and centre crop.
    Both end with conversion to float in [0, 1] and normalisation by ``mean``/``std``.
    """
    from torchvision.transforms import InterpolationMode, v2
    size = input_size if isinstance(input_size, int) else int(input_size[-1])
    interp = InterpolationMode(interpolation if interpolation != 'random' else 'bilinear')
    if is_training:
        ops = [v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), interpolation=interp, antialias=True)]
        if hflip > 0:
            ops.append(v2.RandomHorizontalFlip(hflip))
        if color_jitter:
            ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    else:
        ops = [v2.Resize(math.floor(size / crop_pct), interpolation=interp, antialias=True), v2.CenterCrop(size)]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


# ------------------------------------------------------------------------------ seeded data order
@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with python's, numpy's and torch's CPU generators seeded, then restore them."""
    py, npy, pt = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.random.set_rng_state(pt)


class SeededBatchSampler(Sampler):
    """Batches of ``(index, augmentation seed)`` from a permutation fixed by (seed, epoch).

    ``batch_size`` is the global batch: each of ``world_size`` processes takes its contiguous
    slice of every global batch, so the union over processes is the same as with one process.
    ``set_epoch(epoch, start_batch)`` picks the epoch and skips batches (resume mid-epoch).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True):
        if batch_size % world_size:
            raise ValueError(f'batch size {batch_size} is not divisible by {world_size} processes')
        if drop_last and num_samples < batch_size:
            raise ValueError(f'{num_samples} samples cannot fill one batch of {batch_size} (drop_last)')
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.drop_last = rank, world_size, shuffle, drop_last
        self.epoch = self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.start_batch, 0)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
        order = torch.randperm(self.num_samples, generator=g) if self.shuffle else torch.arange(self.num_samples)
        seeds = torch.randint(0, 2 ** 62, (self.num_samples,), generator=g)
        local = self.batch_size // self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            pos = order[b * self.batch_size:(b + 1) * self.batch_size][self.rank * local:(self.rank + 1) * local]
            yield [(int(i), int(seeds[i])) for i in pos]


class SeededTransform(Dataset):
    """``dataset[index]`` with ``transform`` applied under ``seeded_rng(seed)``; keys are (index, seed)."""

    def __init__(self, dataset: Dataset, transform: Callable):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[Any, int]:
        index, seed = key
        img, target = self.dataset[index]
        with seeded_rng(seed):
            return self.transform(img), target


def loader_throughput(loader: DataLoader, max_batches: Optional[int] = None) -> Dict[str, float]:
    """Images per second of a data loader alone (the first batch, with worker start-up, untimed)."""
    it = iter(loader)
    next(it)
    n, batches, start = 0, 0, time.perf_counter()
    for x, _ in it:
        n += len(x)
        batches += 1
        if max_batches and batches >= max_batches:
            break
    seconds = time.perf_counter() - start
    return {'images': n, 'batches': batches, 'seconds': seconds, 'img_per_s': n / seconds if seconds else 0.}


def model_data_config(model: nn.Module, cfg: 'DataConfig') -> Dict[str, Any]:
    """timm's data config of the model at our image size (mean, std, interpolation, crop_pct)."""
    dc = timm.data.resolve_model_data_config(model)
    dc['input_size'] = (3, cfg.img_size, cfg.img_size)
    if cfg.crop_pct is not None:
        dc['crop_pct'] = cfg.crop_pct
    if cfg.interpolation is not None:
        dc['interpolation'] = cfg.interpolation
    return dc


def synthetic_image_folder(root: Path, per_class: int = 8, size: int = 40) -> Path:
    """A tiny ImageFolder (3 classes of noisy single-colour JPEGs, both splits), made once: the smoke
    config runs from a fresh clone without any data set."""
    from PIL import Image
    if (root / 'done').is_file():
        return root
    rng = np.random.default_rng(0)
    for split, n in (('train', per_class), ('val', max(per_class // 2, 1))):
        for c, colour in enumerate([(220, 40, 40), (40, 200, 40), (40, 40, 220)]):
            folder = root / split / f'class{c}'
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f'{i}.jpg', quality=90)
    (root / 'done').write_text('')
    return root


def data_root(cfg: 'Config') -> Optional[Path]:
    """The checked data root; None in the config makes the synthetic set under output_dir (None for a timm
    dataset that needs no root, e.g. a Hugging Face dataset from the Hub cache)."""
    check_paths(cfg)
    if cfg.data.root is None and not cfg.data.dataset:
        return synthetic_image_folder(resolve(cfg.output_dir) / 'synthetic_data')
    return resolve(cfg.data.root)


class TrainStream:
    """The training split of a timm iterable dataset (wds/, hfids/, tfds/), made for each stage's loader: the
    reader rounds every worker's share of an epoch to that stage's per-process batch. ``len``: images per epoch."""

    def __init__(self, cfg: 'DataConfig', root: Optional[Path], split: str, transform: Callable, seed: int):
        self.cfg, self.root, self.split, self.transform, self.seed = cfg, root, split, transform, seed
        self.num_samples = getattr(self.make(1).reader, 'num_samples', 0)

    def __len__(self) -> int:
        return self.num_samples

    def make(self, batch_size: int, num_processes: int = 1) -> IterableDataset:
        ds = _create_dataset(self.cfg, self.root, self.split, is_training=True, batch_size=batch_size,
                             seed=self.seed, repeats=self.cfg.repeats, num_samples=self.cfg.num_samples,
                             transform=self.transform)
        shards = getattr(getattr(ds.reader, 'split_info', None), 'filenames', None)
        readers = num_processes * max(self.cfg.workers, 1)
        if shards is not None and len(shards) < readers:  # timm gives each (process, worker) whole shards
            raise ValueError(f'data.dataset={self.cfg.dataset!r} split {self.split!r} has {len(shards)} shard(s) '
                             f'for {num_processes} process(es) x {max(self.cfg.workers, 1)} loader worker(s): '
                             f'every reader needs at least one shard (write more shards or lower data.workers)')
        ds.set_loader_cfg(num_workers=self.cfg.workers)
        return ds


def _create_dataset(cfg: 'DataConfig', root: Optional[Path], split: str, **kwargs) -> Dataset:
    return timm.data.create_dataset(cfg.dataset, root=None if root is None else str(root), split=split, **kwargs)


def timm_datasets(cfg: 'DataConfig', root: Optional[Path], train_tf: Callable, val_tf: Callable, seed: int):
    """(train, val, class names) of a timm dataset. A map-style one (hfds/, torch/) takes the folder route's
    seeded sampler (exact resume); an iterable one (a stream) shards itself over processes and loader workers
    as timm's readers do, and its training split is a ``TrainStream``."""
    train_split, val_split = cfg.splits()
    val = _create_dataset(cfg, root, val_split, is_training=False, batch_size=cfg.eval_batch_size, transform=val_tf)
    if isinstance(val, IterableDataset):
        val.set_loader_cfg(num_workers=cfg.workers)
        train = TrainStream(cfg, root, train_split, train_tf, seed)
    else:
        train = SeededTransform(_create_dataset(cfg, root, train_split, is_training=True), train_tf)
    return train, val, _class_names(val)


def _class_names(dataset: Dataset) -> Optional[List[str]]:
    """A timm dataset's class names where it knows them (torchvision's ``classes``, a reader's class map)."""
    if getattr(dataset, 'classes', None):
        return list(dataset.classes)
    to_idx = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None) or {}
    return [c for c, _ in sorted(to_idx.items(), key=lambda kv: kv[1])] or None


def build_datasets(cfg: 'DataConfig', root: Optional[Path], dc: Dict[str, Any], accelerator: 'Accelerator',
                   train_size: Optional[int] = None, seed: int = 0):
    """(train dataset keyed by (index, seed) or a ``TrainStream``, val dataset, class names; None: a timm dataset
    that does not name its classes). ``train_size``: the training crops' size when it is not the model's (a
    teacher's larger size; the student's step resizes them down)."""
    train_size = train_size or cfg.img_size
    train_split, val_split = cfg.splits()
    val_max = cfg.val_max_per_class if cfg.val_max_per_class is not None else cfg.max_per_class
    aug = dict(scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip, color_jitter=cfg.color_jitter,
               interpolation=dc['interpolation'], mean=dc['mean'], std=dc['std'])
    if cfg.dataset:
        train_tf = timm.data.create_transform((3, train_size, train_size), is_training=True, **aug)
        return timm_datasets(cfg, root, train_tf, timm.data.create_transform(**dc, is_training=False), seed)
    if cfg.cache:
        size = cfg.cache_size or math.floor(cfg.img_size / dc['crop_pct'])
        cache = dict(size=size, cache_dir=resolve(cfg.cache_dir), interpolation=dc['interpolation'],
                     workers=cfg.workers)
        with accelerator.main_process_first():  # the main process decodes, the others then read
            train = cached_image_folder(root / train_split, max_per_class=cfg.max_per_class, **dict(
                cache, size=cfg.cache_size or math.floor(train_size / dc['crop_pct'])))
            val = cached_image_folder(root / val_split, max_per_class=val_max, **cache,
                                      transform=tensor_transform(cfg.img_size, False, crop_pct=dc['crop_pct'], **{
                                          k: aug[k] for k in ('interpolation', 'mean', 'std')}))
        train_tf = tensor_transform(train_size, True, **aug)
    else:
        train = image_folder(root / train_split, max_per_class=cfg.max_per_class)
        val = image_folder(root / val_split, max_per_class=val_max,
                           transform=timm.data.create_transform(**dc, is_training=False))
        train_tf = timm.data.create_transform((3, train_size, train_size), is_training=True, **aug)
    if dataset_classes(train) != dataset_classes(val):
        raise ValueError(f'train and val splits of {root} have different classes')
    return SeededTransform(train, train_tf), val, dataset_classes(train)


def train_loader(dataset, batch_size: int, cfg: 'Config', accelerator: 'Accelerator') -> DataLoader:
    """The training loader: the seeded sampler over a map-style dataset, or a stream made for this batch."""
    common = dict(num_workers=cfg.data.workers, persistent_workers=cfg.data.workers > 0,
                  pin_memory=accelerator.device.type == 'cuda', generator=torch.Generator().manual_seed(cfg.seed))
    if isinstance(dataset, TrainStream):
        if batch_size % accelerator.num_processes:
            raise ValueError(f'batch size {batch_size} is not divisible by {accelerator.num_processes} processes')
        local = batch_size // accelerator.num_processes
        return DataLoader(dataset.make(local, accelerator.num_processes), batch_size=local, drop_last=True, **common)
    sampler = SeededBatchSampler(len(dataset), batch_size, seed=cfg.seed, rank=accelerator.process_index,
                                 world_size=accelerator.num_processes)
    return DataLoader(dataset, batch_sampler=sampler, **common)  # the generator keeps the global RNG untouched


def epoch_steps(loader: DataLoader) -> int:
    """Batches in one epoch of a training loader."""
    sampler = loader.batch_sampler
    return sampler.batches_per_epoch if isinstance(sampler, SeededBatchSampler) else len(loader)


def start_epoch(loader: DataLoader, epoch: int, start_batch: int) -> None:
    """Set the epoch (a stream's shard order follows it) and, for the seeded sampler, skip ``start_batch``
    batches (exact mid-epoch resume). A stream cannot seek: the train loop ends its epoch after the steps left."""
    if isinstance(loader.batch_sampler, SeededBatchSampler):
        loader.batch_sampler.set_epoch(epoch, start_batch)
    else:
        loader.dataset.set_epoch(epoch)


def loader_stats(dataset, cfg: 'Config', accelerator: 'Accelerator') -> Dict[str, Any]:
    """``mode=loader``: the first stage's training loader alone, timed (``loader_throughput``), with its settings."""
    batch_size = cfg.stage(cfg.stages[0] if cfg.stages else 2).batch_size
    stats = loader_throughput(train_loader(dataset, batch_size, cfg, accelerator), cfg.loader_batches)
    return {'mode': 'loader', 'cache': cfg.data.cache, 'workers': cfg.data.workers, 'batch_size': batch_size, **stats}
