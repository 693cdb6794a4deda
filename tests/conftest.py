from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config):
    # tests/run.sh runs one pytest worker per core; a worker with several intra-op threads
    # would fight the other worker for cores (and tiny tensors gain nothing from threads).
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's real cache folder."""
    monkeypatch.setenv("FEWSHOT_METAOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


OMNIGLOT = SHARED_DATA / "omniglot"
needs_real = pytest.mark.skipif(
    not (OMNIGLOT / "images_background.zip").is_file(), reason=f"{OMNIGLOT} is absent"
)
REAL_SIZES = {"train": 4112, "val": 688, "trainval": 4800, "test": 1692, "background": 964, "evaluation": 659}


@pytest.fixture(scope="session")
def real(tmp_path_factory):
    """Every split of the real Omniglot, with the cache built once per test session."""
    from fewshot_metaopt.datasets import Omniglot

    cache = tmp_path_factory.mktemp("omniglot-real-cache")
    first = Omniglot(OMNIGLOT, "train", cache_dir=cache)
    splits = {s: Omniglot(OMNIGLOT, s, cache_dir=cache) for s in REAL_SIZES}
    return {"cache": cache, "splits": splits, "first": first}
