"""Checkpoints are data, not code: reading them safely, the classes a checkpoint may name, atomic writes, and a
lock per run folder.

A Lightning checkpoint stores the training system's hyper-parameters, among them the injected net as a
``{class_path, init_args}`` block. Whoever builds the net from that block decides what code runs, so hamode
builds it only when ``class_path`` is one of its own models (`allowed_net_classes()`) or a class the user named
(``trusted=`` in Python, the config's ``model.net`` on the command line), and only from plain data: a
``class_path`` anywhere else in the hyper-parameters is refused before anything is imported.
"""

from __future__ import annotations

import errno
import importlib
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "RunLock",
    "RunLockedError",
    "allowed_net_classes",
    "build_net",
    "check_class_paths",
    "class_paths",
    "read_checkpoint",
]

CLASS_KEYS = ("class_path", "_class_path")
"""Keys under which jsonargparse and Lightning name a class to instantiate."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose hyper-parameters name a class hamode does not build."""


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path`` read as data (``torch.load(weights_only=True)``: tensors and plain values, no
    pickled objects), or [`CheckpointError`][lightning_modules.CheckpointError] naming the file and what is wrong
    with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it was not written completely")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or holds objects other than tensors and plain data ({first[:200]}); "
            "hamode reads checkpoints as data only and will not unpickle it"
        ) from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as e:
        what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {what[:200]}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict)")
    hparams = checkpoint.get("hyper_parameters", {})
    if not isinstance(hparams, dict):
        raise CheckpointError(f"checkpoint {path}: its hyper_parameters are not a dict ({type(hparams).__name__})")
    return checkpoint


def class_paths(value: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """``(key path, class path)`` for every ``class_path`` / ``_class_path`` in a nested config (dicts, lists)."""
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, dict):
        for k, v in value.items():
            key = f"{where}.{k}" if where else str(k)
            if k in CLASS_KEYS:
                yield where or "(top level)", v
            else:
                yield from class_paths(v, key)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from class_paths(v, f"{where}[{i}]")


def allowed_net_classes() -> frozenset[str]:
    """Import paths of the models hamode builds from a checkpoint without being told: every ``nn.Module`` class
    that [`models`][hamode.models] exports."""
    from torch import nn

    import hamode.models as models

    return frozenset(
        f"{obj.__module__}.{obj.__qualname__}"
        for name in models.__all__
        if isinstance(obj := getattr(models, name), type) and issubclass(obj, nn.Module)
    )


def _path_of(cls: type | str) -> str:
    if isinstance(cls, str):
        return cls
    if isinstance(cls, type):
        return f"{cls.__module__}.{cls.__qualname__}"
    raise TypeError(f"trusted must name classes (a class or its import path), got {cls!r}")


def check_class_paths(
    source: str, hparams: Any, trusted: Iterable[type | str] = (), how: str = "", where: str = ""
) -> None:
    """Refuse ([`CheckpointError`][lightning_modules.CheckpointError]) a class path in ``hparams`` that is neither
    one of hamode's models nor in
    ``trusted``, before anything is imported. ``source`` names the checkpoint; ``how`` says how to allow one;
    ``where`` is the key path of ``hparams`` in the checkpoint's hyper-parameters."""
    allowed = allowed_net_classes() | {_path_of(c) for c in trusted}
    for key, path in class_paths(hparams, where):
        if not isinstance(path, str) or path not in allowed:
            raise CheckpointError(
                f"checkpoint {source} names the class {path!r} at {key}; hamode builds only its own models "
                f"({', '.join(sorted(p.rsplit('.', 1)[1] for p in allowed_net_classes()))}) and classes you name, "
                f"so nothing was imported or run{how}"
            )


def build_net(spec: Any, source: str, trusted: Iterable[type | str] = ()) -> torch.nn.Module:
    """The net of a checkpoint's ``{class_path, init_args}`` block, built from plain data after
    `check_class_paths()`."""
    if not (isinstance(spec, dict) and isinstance(spec.get("class_path"), str)):
        raise CheckpointError(
            f"checkpoint {source} has no net config (class_path, init_args) to rebuild its model from: load it with "
            "HDNNClassifier.load_from_checkpoint(path, net=<the model it was trained with>)"
        )
    how = ": pass trusted=[TheClass] (or net=<the model>) to load it"
    check_class_paths(source, spec, trusted, how, where="net")
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise CheckpointError(f"checkpoint {source}: net init_args must be a dict, got {type(init_args).__name__}")
    module_name, _, name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    return cls(**init_args)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it and renames it into place: a process killed while
    saving leaves the previous checkpoint whole (``last.ckpt`` is never half-written)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)


class RunLockedError(RuntimeError):
    """Another process is writing into the run folder."""


class RunLock:
    """An exclusive lock on a run folder (``<run>/hamode.lock``, an OS file lock): a second ``hamode fit`` writing
    into the same folder is refused. The operating system releases the lock when the process ends, however it
    ends (kill -9 included), so a crashed run never leaves a stale lock behind."""

    FILENAME = "hamode.lock"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / self.FILENAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise RunLockedError(
                f"the run folder {self.folder} is in use by another hamode process (pid {holder}): wait for it to "
                "finish or stop it; two processes writing one run would mix their checkpoints and logs"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def __del__(self) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None
