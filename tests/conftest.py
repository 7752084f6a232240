"""Test session set-up: offline, deterministic, and pointed at ../shared through environment variables.

HYBRID_DATA_DIR          benchmark data (default ../shared/data)
HYBRID_REFERENCE_ORACLES official-code oracle outputs (default ../shared/reference/oracles)

Tests that need one of these folders take the fixture and are skipped, with the path in the reason, when it is absent.
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Set before anything imports transformers / huggingface_hub, so no test can reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HYBRID_DATA_DIR", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("HYBRID_REFERENCE_ORACLES", str(REPO.parent / "shared" / "reference" / "oracles"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _dir_or_skip(var: str) -> Path:
    path = Path(os.environ[var])
    if not path.is_dir():
        pytest.skip(f"{var}={path} does not exist; set {var} to the folder to run this test")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The benchmark data folder (skips the test when absent)."""
    return _dir_or_skip("HYBRID_DATA_DIR")


@pytest.fixture(scope="session")
def oracle_root() -> Path:
    """The official-implementation oracle folder (skips the test when absent)."""
    return _dir_or_skip("HYBRID_REFERENCE_ORACLES")


def pytest_configure(config):
    import torch

    # One thread: the suite runs on 2 shared cores, where two OpenMP threads per process contend badly.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    import torch

    torch.manual_seed(0)
    yield
