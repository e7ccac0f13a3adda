"""Data for the training loop: manifests, fast JPEG decode, a pre-resized image cache, samplers, loaders.

A channel is a directory (SageMaker's SM_CHANNEL_<NAME>) holding `<channel>.csv` (or
`manifest.csv`) with the header `id,path,count`; `path` resolves against `data_root` when given,
else against the channel dir. A channel without a manifest may use the folder layout
`<channel>/<label>/<id>.jpg` (labels as in the class spec: "1".."5", "5+").

Every image goes through the same first step, `Resize(image_size, image_size)` on the decoded
uint8 image, then the train or eval preset (core/presets.py). The cache memoises that first step
on disk (one uint8 array per data set), so epochs after the first skip JPEG decoding and resizing
with results identical to an uncached run.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from .classes import ClassSpec
from .contract import MANIFEST_HEADER

log = logging.getLogger(__name__)

MANIFEST_FALLBACK = "manifest.csv"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class InputDataError(ValueError):
    """A channel, manifest or image is missing or unreadable (the message names it)."""


@dataclass(frozen=True)
class Sample:
    id: str
    path: Path
    target: int  # class index (ClassSpec.index of the manifest count)


# ---------------------------------------------------------------- manifests and channels
def find_manifest(channel_dir: str | Path, channel: str) -> Path | None:
    """`<channel>.csv`, else `manifest.csv`, in the channel dir; None if neither exists."""
    for name in (f"{channel}.csv", MANIFEST_FALLBACK):
        path = Path(channel_dir) / name
        if path.is_file():
            return path
    return None


def read_manifest(path: str | Path, spec: ClassSpec, data_root: str | Path | None = None) -> list[Sample]:
    """Samples of an `id,path,count` manifest. Ids stay strings ("00002")."""
    path = Path(path)
    root = Path(data_root) if data_root is not None else path.parent
    samples = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != MANIFEST_HEADER:
            raise InputDataError(f"{path}: expected the header {','.join(MANIFEST_HEADER)}, got {header}")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 3:
                raise InputDataError(f"{path}:{lineno}: expected 3 fields (id,path,count), got {len(row)}")
            id_, rel, count = row
            try:
                target = spec.index(int(count))
            except ValueError:
                raise InputDataError(f"{path}:{lineno}: count {count!r} is not in classes {spec} "
                                f"(was the split made with other classes?)") from None
            samples.append(Sample(id_, root / rel, target))
    return samples


def scan_folders(channel_dir: str | Path, spec: ClassSpec) -> list[Sample]:
    """Samples of the folder layout `<dir>/<label>/<id>.jpg`, in a stable order."""
    channel_dir = Path(channel_dir)
    samples = []
    for index, label in enumerate(spec.labels):
        folder = channel_dir / label
        if folder.is_dir():
            samples += [Sample(p.stem, p, index) for p in sorted(folder.iterdir())
                        if p.suffix.lower() in IMAGE_SUFFIXES]
    return samples


def load_channel(channel_dir: str | Path, channel: str, spec: ClassSpec,
                 data_root: str | Path | None = None) -> list[Sample]:
    """The samples of one channel (manifest, else folder layout); a clear error when there are none."""
    channel_dir = Path(channel_dir)
    if not channel_dir.is_dir():
        raise InputDataError(f"{channel} channel {channel_dir} is not a directory")
    manifest = find_manifest(channel_dir, channel)
    samples = read_manifest(manifest, spec, data_root) if manifest else scan_folders(channel_dir, spec)
    if not samples:
        where = manifest or f"{channel_dir}/<{'|'.join(spec.labels)}>/*.jpg"
        raise InputDataError(f"{channel} channel: no images in {where} "
                        f"(expected {channel}.csv or {MANIFEST_FALLBACK} with header id,path,count)")
    missing = [s for s in samples if not s.path.is_file()]
    if missing:
        raise InputDataError(f"{channel} channel: {len(missing)} image(s) missing, e.g. {missing[0].path} "
                        f"(id {missing[0].id}); check --data-root")
    return samples


def fingerprint(samples: Sequence[Sample], files: bool = True) -> str:
    """Identifies a data set. files=True (caches): ids, classes, paths, sizes and mtimes, so any change
    to a file invalidates. files=False (resume): ids, classes and sizes only, so the same data copied
    elsewhere (a restarted SageMaker job downloads its channels again) still matches."""
    h = hashlib.sha1()
    for s in samples:
        st = s.path.stat()
        where = f"{s.path.resolve()}\0{st.st_mtime_ns}" if files else ""
        h.update(f"{s.id}\0{s.target}\0{st.st_size}\0{where}\n".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- decoding
def decode(data: bytes | torch.Tensor) -> torch.Tensor:
    """Encoded image -> uint8 RGB CHW tensor. libjpeg-turbo via torchvision (about 1.5x faster than
    PIL on ABID photos); PNG and other formats via torchvision, then PIL as the last resort."""
    raw = data if isinstance(data, torch.Tensor) else torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders for TorchCodec; the SageMaker images (torchvision
            # <= 0.24) have no TorchCodec, so these stay until the core can rely on it.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
            if raw.numel() > 2 and raw[0] == 0xFF and raw[1] == 0xD8:
                return decode_jpeg(raw, mode=ImageReadMode.RGB)
            return decode_image(raw, mode=ImageReadMode.RGB)
    except RuntimeError:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(raw.numpy().tobytes())) as img:
            return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1).contiguous()


def read_image(path: str | Path) -> torch.Tensor:
    try:
        return decode(Path(path).read_bytes())
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputDataError(f"{path}: cannot read image ({exc})") from None


def resize_square(img: torch.Tensor, size: int) -> torch.Tensor:
    """The first step of every preset: the whole bin to size x size (uint8 in, uint8 out)."""
    if img.shape[-2:] == (size, size):
        return img
    return TF.resize(img, [size, size], antialias=True)


# ---------------------------------------------------------------- cache
class ImageCache:
    """Decoded, resized images in one uint8 file (N, 3, S, S) plus a 'filled' byte per image.

    Filled lazily by whichever process (DataLoader worker, DDP rank) first loads an image; the
    data is written before its flag, so a killed run leaves no torn entry behind. The file name
    carries the data set's fingerprint and the size, so a changed manifest or image size never
    reads a stale cache. np.memmap objects are opened per process (they do not survive pickling).
    """

    def __init__(self, cache_dir: str | Path, key: str, n: int, size: int):
        self.n, self.size = n, size
        base = Path(cache_dir) / f"{key}-{n}x{size}px"
        self.data_path, self.flags_path = base.with_suffix(".u8"), base.with_suffix(".ok")
        self._pid = None
        self._data = self._flags = None
        nbytes = n * 3 * size * size
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        for path, length in ((self.data_path, nbytes), (self.flags_path, n)):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size != length:
                    os.ftruncate(fd, length)
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, length)  # fail now (ENOSPC), not with SIGBUS later
            finally:
                os.close(fd)

    def _open(self) -> None:
        if self._pid != os.getpid():
            shape = (self.n, 3, self.size, self.size)
            self._data = np.memmap(self.data_path, dtype=np.uint8, mode="r+", shape=shape)
            self._flags = np.memmap(self.flags_path, dtype=np.uint8, mode="r+", shape=(self.n,))
            self._pid = os.getpid()

    def get(self, index: int) -> torch.Tensor | None:
        self._open()
        if not self._flags[index]:
            return None
        return torch.from_numpy(np.array(self._data[index]))

    def put(self, index: int, img: torch.Tensor) -> None:
        self._open()
        self._data[index] = img.numpy()
        self._flags[index] = 1

    def filled(self) -> int:
        self._open()
        return int(np.count_nonzero(self._flags))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pid": None, "_data": None, "_flags": None}


def open_cache(cache_dir: str | Path | None, samples: Sequence[Sample], size: int) -> ImageCache | None:
    """An ImageCache for these samples, or None (no dir, or no disk space: training goes on uncached)."""
    if cache_dir is None or not samples:
        return None
    try:
        cache = ImageCache(cache_dir, fingerprint(samples), len(samples), size)
    except OSError as exc:
        log.warning("image cache disabled: cannot allocate %s in %s (%s)",
                    _human(len(samples) * 3 * size * size), cache_dir, exc.strerror or exc)
        return None
    log.info("image cache %s (%s, %d/%d filled)", cache.data_path, _human(len(samples) * 3 * size * size),
             cache.filled(), len(samples))
    return cache


def _human(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return str(nbytes)


# ---------------------------------------------------------------- dataset
class CountDataset(Dataset):
    """(image tensor, class index) pairs: decode -> resize to image_size (cached) -> preset."""

    def __init__(self, samples: Sequence[Sample], image_size: int, transform: Callable | None = None,
                 cache: ImageCache | None = None):
        self.samples = list(samples)
        self.image_size = image_size
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> torch.Tensor:
        """The decoded image resized to image_size x image_size (uint8 CHW), from the cache if there."""
        img = self.cache.get(index) if self.cache is not None else None
        if img is None:
            img = resize_square(read_image(self.samples[index].path), self.image_size)
            if self.cache is not None:
                self.cache.put(index, img)
        return img

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.load(index)
        return (self.transform(img) if self.transform is not None else img), self.samples[index].target

    @property
    def targets(self) -> list[int]:
        return [s.target for s in self.samples]


# ---------------------------------------------------------------- samplers
class TrainSampler(Sampler[int]):
    """Shuffled indices for one rank, reproducible per epoch, resumable mid-epoch.

    Epoch e uses permutation(seed + e). `start` skips what the whole job already consumed this
    epoch: rank r yields rest[r::world] with rest = perm[start:], padded (with its own head) to a
    multiple of `world`, so every rank gets the same number of samples and batches (DDP needs that).
    Because ranks take strided slices, samples consumed so far by all ranks are exactly perm[:start].
    """

    def __init__(self, n: int, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True):
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world, seed, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        rest = perm[self.start:]
        if rest and len(rest) % self.world:
            pad = self.world - len(rest) % self.world
            rest += (rest * math.ceil(pad / len(rest)))[:pad]
        return rest[self.rank::self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        rest = max(0, self.n - self.start)
        return math.ceil(rest / self.world) if rest else 0


class ShardSampler(Sampler[int]):
    """Evaluation: rank r gets indices r, r+world, ... with NO padding, so metrics summed over ranks
    count every image exactly once (DistributedSampler pads and would count some twice)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loader(dataset: Dataset, batch_size: int, sampler: Sampler, workers: int, *, drop_last: bool = False,
                 pin_memory: bool = False, generator: torch.Generator | None = None) -> DataLoader:
    """DataLoader with the settings that matter for throughput: workers that stay up between epochs,
    prefetching, pinned memory on GPU."""
    kwargs = {"persistent_workers": True, "prefetch_factor": 4} if workers > 0 else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=drop_last, generator=generator, **kwargs)
