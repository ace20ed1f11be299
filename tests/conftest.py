"""Shared fixtures and markers. Run-wide settings (hub off, results and logs to a scratch folder) live in
tests/course_env.py, loaded by pytest.ini for the notebooks too."""
import pytest
import torch

from tests.course_env import *  # noqa: F401,F403  (also when a test file is run without pytest.ini)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: skipped, with the reason, on a machine without it."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def course_model():
    """The offline default model on CPU in float32, loaded once per test run (read-only: do not modify it)."""
    from utils.models import load_model
    torch.set_num_threads(1)
    return load_model(device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def course_tokenizer():
    from utils.models import load_tokenizer
    return load_tokenizer()
