
import pytest

from cudakit import load_trainer


@pytest.fixture(scope="session")
def train():
    return load_trainer()
