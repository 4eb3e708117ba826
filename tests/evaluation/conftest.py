import pytest

from tests.evaluation._fid_fakes import save_random_inception


@pytest.fixture(scope="session")
def random_inception(tmp_path_factory) -> str:
    """Path of a random-init Inception-v3 state dict (made once per test run)."""
    return save_random_inception(str(tmp_path_factory.mktemp("inception") / "inception.pth"))
