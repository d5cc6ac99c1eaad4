"""Data sets as in-memory tensors or streamed splits, and the seeded train / validation / test splits a study uses.

Sources: scikit-learn's digits (embedded, no download), CIFAR-10/100 (a folder with train.npz/test.npz, or a
torchvision download), and an ImageFolder directory (``train/`` and ``val/`` or ``test/`` under the root),
each registered by name in :data:`DATASETS` (the names ``data.name`` accepts), or the user's own data set as
``package.module:factory`` (:func:`resolve_data`): the factory returns map-style train and test data sets, of
which only the items the splits need are read (:mod:`autoprune.data.user_data`).
The search scores trials on ``val``; ``test`` (held out) and ``test_full`` (the official test split) are used
only by explicit evaluation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch

from autoprune.data.batching import Batches, crop_flip, crop_flip_params, device_layout, random_crop_flip  # noqa: F401 - re-exported
from autoprune.data.streaming import StreamSplit, default_workers
from autoprune.data.user_data import DatasetSource, bad_data, load_user
from autoprune.errors import AutopruneError, first_line
from autoprune.registry import Registry, import_callable


class DataSettings(Protocol):
    """What loading a data set reads (a :class:`~autoprune.config.DataConfig` has all of it)."""

    name: str
    root: str | None
    val_source: str
    val_fraction: float
    test_fraction: float
    seed: int
    mean: list[float] | None
    std: list[float] | None
    image_size: int
    train_subset: int | None
    kwargs: dict[str, Any]  # keyword arguments of a package.module:factory data set
    num_workers: int | None  # loader worker processes of a streamed data set (None: default_workers())
    memory_mb: int  # streamed splits that fit in this many MB together are decoded once and held

CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass
class Split(Batches):
    """Images held in memory (uint8 NCHW, or float NCHW already in [0, 1]) and labels, normalised batch by batch."""

    x: torch.Tensor
    y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """One image's (channels, height, width)."""
        return tuple(self.x.shape[1:])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device), self.mean.to(device), self.std.to(device))

    def subset(self, idx: torch.Tensor | np.ndarray) -> Split:
        idx = torch.as_tensor(idx, device=self.x.device)
        return Split(self.x[idx], self.y[idx], self.mean, self.std)

    def read(self, idx: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx if isinstance(idx, slice) else torch.as_tensor(idx).to(self.x.device)
        return self.x[idx], self.y[idx]

    def rows(self, rows: Iterable[torch.Tensor | slice]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (self.read(r) for r in rows)


Images = Split | StreamSplit  # a split: in memory (array data sets) or streamed (image folders, user sets)


def join(a: Images, b: Images) -> Images:
    """The images of ``a`` then those of ``b`` (two splits of one data set, normalised alike), without reading
    a streamed split.

    >>> s = Split(torch.zeros(2, 1, 1, 1), torch.tensor([0, 1]), torch.zeros(1), torch.ones(1))
    >>> join(s, s.subset([1])).y.tolist()
    [0, 1, 1]
    """
    if isinstance(a, Split) and isinstance(b, Split):
        return Split(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]), a.mean, a.std)
    if isinstance(a, StreamSplit) and isinstance(b, StreamSplit) and a.reader == b.reader:
        return dataclasses.replace(a, idx=torch.cat([a.idx, b.idx]), y=torch.cat([a.y, b.y]))
    raise ValueError("only two splits of the same data set can be joined")


@dataclass
class DataSplits:
    train: Images
    val: Images
    test: Images
    test_full: Images
    num_classes: int
    info: dict = field(default_factory=dict)

    def get(self, name: str) -> Images:
        names = {"train": self.train, "val": self.val, "test": self.test, "test-full": self.test_full}
        if name not in names:
            raise AutopruneError(f"unknown split {name!r}; valid: {', '.join(names)}")
        return names[name]

    def to(self, device: torch.device | str) -> DataSplits:
        return DataSplits(self.train.to(device), self.val.to(device), self.test.to(device), self.test_full.to(device),
                          self.num_classes, self.info)


# ----------------------------------------------------------------------------------------------------- sources
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    return x, d.target.astype(np.int64)


def _cifar(name: str, root: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if root and (Path(root) / "train.npz").is_file() and (Path(root) / "test.npz").is_file():
        tr, te = np.load(Path(root) / "train.npz"), np.load(Path(root) / "test.npz")
        return (tr["x"].transpose(0, 3, 1, 2), tr["y"].astype(np.int64),
                te["x"].transpose(0, 3, 1, 2), te["y"].astype(np.int64))
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    where = root or "data"
    try:
        tr = cls(where, train=True, download=True)
        te = cls(where, train=False, download=True)
    except Exception as exc:  # no network, bad folder
        raise AutopruneError(
            f"cannot load {name} from {where!r} (no train.npz/test.npz there and download failed: "
            f"{first_line(exc)})", field="data.root") from None
    return (tr.data.transpose(0, 3, 1, 2), np.asarray(tr.targets, dtype=np.int64),
            te.data.transpose(0, 3, 1, 2), np.asarray(te.targets, dtype=np.int64))


@dataclass
class FolderReader:
    """Decode image ``i`` of a torchvision ImageFolder as uint8 3xHxW (grey repeated, alpha dropped)."""

    folder: Any  # torchvision.datasets.ImageFolder, its transform resizing and cropping to image_size

    def __call__(self, i: int) -> torch.Tensor:
        try:
            t, _ = self.folder[i]
        except Exception as exc:  # noqa: BLE001 - a file PIL cannot read
            raise AutopruneError(f"cannot read image {self.folder.samples[i][0]}: {first_line(exc)}",
                                 field="data.root") from None
        return t.expand(3, -1, -1) if t.shape[0] == 1 else t[:3]


@dataclass
class FolderSource:
    """An ImageFolder's train and test folders, streamed: nothing is decoded at load but one image (the check)."""

    train: Any
    test: Any
    num_classes: int
    num_workers: int
    shape: tuple[int, ...]  # one image's (3, image_size, image_size), from decoding the first
    stats: tuple[tuple[float, ...], tuple[float, ...]] = IMAGENET_STATS
    official_test: bool = True

    @property
    def sizes(self) -> tuple[int, int]:
        return len(self.train), len(self.test)

    def split(self, part: str, idx: np.ndarray | None) -> StreamSplit:
        ds = self.train if part == "train" else self.test
        targets = torch.as_tensor(ds.targets, dtype=torch.long)
        rows = torch.arange(len(ds)) if idx is None else torch.as_tensor(idx, dtype=torch.long)
        return StreamSplit(FolderReader(ds), rows, targets[rows], torch.zeros(3), torch.ones(3), self.shape,
                           self.num_workers)

    def image_stats(self, split: StreamSplit) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.stats


def _image_folder(root: str, size: int, num_workers: int) -> FolderSource:
    import torchvision
    from torchvision import transforms

    base = Path(root)
    test_dir = next((base / d for d in ("val", "test") if (base / d).is_dir()), None)
    if not (base / "train").is_dir() or test_dir is None:
        raise AutopruneError(f"{root} must hold train/ and val/ (or test/) class folders", field="data.root")
    tf = transforms.Compose([transforms.Resize(int(size * 1.14)), transforms.CenterCrop(size), transforms.PILToTensor()])
    try:
        train, test = (torchvision.datasets.ImageFolder(str(d), transform=tf) for d in (base / "train", test_dir))
    except (OSError, RuntimeError) as exc:  # an empty class folder, an unreadable directory
        raise AutopruneError(f"cannot read the image folder {root}: {first_line(exc)}", field="data.root") from None
    if train.classes != test.classes:
        raise AutopruneError(f"train/ and {test_dir.name}/ hold different class folders", field="data.root")
    return FolderSource(train, test, len(train.classes), num_workers, tuple(FolderReader(train)(0).shape))


@dataclass
class Source:
    """A data set as its loader returns it: train and test images (NCHW) and labels, before the splits."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    stats: tuple[tuple[float, ...], tuple[float, ...]]  # the default (mean, std) per channel
    official_test: bool = True  # False: the test split is carved from the one set the source has

    @property
    def sizes(self) -> tuple[int, int]:
        return len(self.y_train), len(self.y_test)

    def split(self, part: str, idx: np.ndarray | None) -> Split:
        """The images and labels at ``idx`` of the ``train`` or ``test`` set (None: all of it), in memory."""
        x, y = (self.x_train, self.y_train) if part == "train" else (self.x_test, self.y_test)
        x, y = (x, y) if idx is None else (x[idx], y[idx])
        c = x.shape[1]
        return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), torch.zeros(c), torch.ones(c))

    def image_stats(self, split: Split) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return channel_stats(split.x.numpy())


def _load_digits(cfg: DataSettings, rng: np.random.Generator) -> Source:
    x, y = _digits()
    perm = rng.permutation(len(y))
    n_test = int(round(cfg.test_fraction * len(y)))
    return Source(x[perm[n_test:]], y[perm[n_test:]], x[perm[:n_test]], y[perm[:n_test]], 10, ((0.0,), (1.0,)),
                  official_test=False)


def _load_cifar(cfg: DataSettings, rng: np.random.Generator) -> Source:
    return Source(*_cifar(cfg.name, cfg.root), 10 if cfg.name == "cifar10" else 100, CIFAR_STATS[cfg.name])


def _load_image_folder(cfg: DataSettings, rng: np.random.Generator) -> FolderSource:
    return _image_folder(cfg.root or "", cfg.image_size, workers(cfg))


def workers(cfg: DataSettings) -> int:
    """``data.num_workers``, or the machine's default (:func:`autoprune.data.streaming.default_workers`)."""
    return default_workers() if cfg.num_workers is None else cfg.num_workers


# name -> loader(config, rng); the rng is the study's split generator (a loader may draw from it, in order)
DATASETS = Registry[Callable[[DataSettings, np.random.Generator], Source | FolderSource]]("data set")
DATASETS.register("digits", _load_digits)
DATASETS.register("cifar10", _load_cifar)
DATASETS.register("cifar100", _load_cifar)
DATASETS.register("imagefolder", _load_image_folder)


def resolve_data(name: str) -> Callable[[DataSettings, np.random.Generator], Source | FolderSource | DatasetSource]:
    """The loader for a registered name or a ``package.module:factory`` path (imported only when named so).

    Example:
        >>> resolve_data("digits") is DATASETS.get("digits")
        True
    """
    if ":" in name:
        factory = import_callable(name, "data", field="data.name")
        return lambda cfg, rng: load_user(factory, cfg, rng, workers(cfg))
    try:
        return DATASETS.get(name)
    except AutopruneError as err:
        raise bad_data(f"{err.message}; or a package.module:factory") from None



# ------------------------------------------------------------------------------------------------------ splits
def split_indices(cfg: DataSettings, n_train: int, n_test: int, rng: np.random.Generator
                  ) -> dict[str, tuple[str, np.ndarray | None]]:
    """Which items each split takes: split -> (``"train"`` or ``"test"`` set, indices into it; None: all).

    Drawn from ``rng`` before anything is read, so a data set read item by item reads only these items.

    Example:
        >>> from autoprune.config import DataConfig
        >>> plan = split_indices(DataConfig(name="digits", train_subset=3), 10, 4, np.random.default_rng(0))
        >>> {k: (part, None if i is None else len(i)) for k, (part, i) in plan.items()}
        {'val': ('train', 2), 'train': ('train', 3), 'test': ('test', None)}
    """
    if cfg.val_source == "train":
        perm = rng.permutation(n_train)
        n_val = round(cfg.val_fraction * n_train)
        plan = {"val": ("train", perm[:n_val]), "train": ("train", perm[n_val:]), "test": ("test", None)}
    else:
        perm = rng.permutation(n_test)
        n_val = round(cfg.val_fraction * n_test)
        plan = {"val": ("test", perm[:n_val]), "train": ("train", None), "test": ("test", perm[n_val:])}
    kept = plan["train"][1]
    n_kept = n_train if kept is None else len(kept)
    if cfg.train_subset is not None and cfg.train_subset < n_kept:
        pick = rng.permutation(n_kept)[: cfg.train_subset]
        plan["train"] = ("train", pick if kept is None else kept[pick])
    return plan


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of NCHW images in [0, 1] (uint8 read as /255); a constant channel gets std 1.

    >>> channel_stats(np.array([[[[0, 255]]], [[[0, 255]]]], dtype=np.uint8))
    ((0.5,), (0.5,))
    """
    if len(x) == 0:
        return (0.0,) * x.shape[1], (1.0,) * x.shape[1]
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    total, squares = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for start in range(0, len(x), 1024):  # in chunks: no float64 copy of the whole set
        chunk = x[start : start + 1024].astype(np.float64) / scale
        total += chunk.sum(axis=(0, 2, 3))
        squares += (chunk**2).sum(axis=(0, 2, 3))
    count = x.size / x.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) if s > 1e-6 else 1.0 for s in std)


def _normalisation(cfg: DataSettings, source: Source | FolderSource | DatasetSource, train: Images
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """data.mean / data.std, else the source's, else (a user data set's) the training images' own statistics."""
    if cfg.mean is not None:
        stats, field_name = (cfg.mean, cfg.std), "data.mean"
    else:
        stats, field_name = source.stats or source.image_stats(train), "data.name"
    mean, std = (torch.tensor(v, dtype=torch.float32) for v in stats)
    if mean.numel() != train.shape[0]:
        raise AutopruneError(f"mean/std have {mean.numel()} values but the images have {train.shape[0]} channels",
                             field=field_name)
    return mean, std


def _fits(memory_mb: int, *splits: Images) -> bool:
    """Whether the streamed ``splits`` together, decoded, take at most ``memory_mb`` MB (one image read for its
    dtype); False when none is streamed."""
    streamed = [s for s in splits if isinstance(s, StreamSplit) and len(s)]
    if not streamed or memory_mb <= 0:
        return False
    item = streamed[0].read(torch.arange(1))[0]
    return sum(len(s) for s in streamed) * item[0].numel() * item.element_size() <= memory_mb * 2**20


def held(split: Images, batch_size: int = 256) -> Images:
    """A streamed split decoded once (through its loader workers) into an in-memory :class:`Split`: the same
    images, so the same batches; an in-memory split as it is."""
    if not isinstance(split, StreamSplit):
        return split
    if not len(split):
        return Split(torch.zeros((0, *split.shape), dtype=torch.uint8), split.y, split.mean, split.std)
    rows = (slice(s, s + batch_size) for s in range(0, len(split), batch_size))
    x = torch.cat([x.cpu() for x, _ in split.rows(rows)])
    return Split(x, split.y.cpu(), split.mean, split.std)


def load_splits(cfg: DataSettings) -> DataSplits:
    """Load the data set named in ``cfg`` and carve its seeded splits (in memory for array data sets, streamed
    for image folders and user data sets).

    Example:
        >>> from autoprune.config import DataConfig
        >>> s = load_splits(DataConfig(name="digits"))
        >>> s.info["val_source"], len(s.val) > 0
        ('train', True)
    """
    rng = np.random.default_rng(cfg.seed)
    source = resolve_data(cfg.name)(cfg, rng)
    plan = split_indices(cfg, *source.sizes, rng)
    full = source.split("test", None)  # the whole test set is test_full

    def carve(part: str, idx: np.ndarray | None) -> Images:
        return source.split(part, idx) if part == "train" else (full if idx is None else full.subset(idx))

    val, train, test = (carve(*plan[name]) for name in ("val", "train", "test"))
    top = max(int(s.y.max()) for s in (train, val, full) if len(s))
    num_classes = source.num_classes or top + 1
    if top >= num_classes:
        raise bad_data(f"data set {cfg.name!r} has label {top} but {num_classes} classes (labels 0 to "
                        f"{num_classes - 1})")
    mean, std = _normalisation(cfg, source, train)
    train, val, test, full = (dataclasses.replace(s, mean=mean, std=std) for s in (train, val, test, full))
    if _fits(cfg.memory_mb, train, val, full):
        train, val, test, full = (held(s) for s in (train, val, test, full))
    info = {
        "dataset": cfg.name,
        "val_source": cfg.val_source,
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "sizes": {"train": len(train), "val": len(val), "test": len(test), "test_full": len(full)},
        "test_is_official": source.official_test,
        "note": ("validation carved from the test split; test = the other part"
                 if cfg.val_source == "test" else "validation carved from the training split"),
    }
    return DataSplits(train, val, test, full, num_classes, info)
