"""Shared test fixtures.

`shared_data` is the one way tests reach `../shared/data` (Tiny Shakespeare, gpt2.tiktoken):
under CI (`CI=true`) missing shared data fails the test, elsewhere it is skipped with a reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _private_user_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Downloads and prepared token files of tests go to a temporary cache, never ~/.cache."""
    os.environ["MYGPT2_CACHE"] = str(tmp_path_factory.mktemp("user-cache"))


@pytest.fixture(autouse=True, scope="session")
def _cpu_without_native_bf16() -> None:
    """Tests see a CPU without native bf16, so `dtype auto` is float32 on every machine and
    references compare at float32's precision (runtime tests set the flags they need)."""
    os.environ["MYGPT2_CPU_FLAGS"] = ""


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Directory holding tinyshakespeare.txt and gpt2.tiktoken."""
    needed = ["tinyshakespeare.txt", "gpt2.tiktoken"]
    missing = [name for name in needed if not (SHARED_DATA / name).is_file()]
    if missing:
        message = f"shared test data missing in {SHARED_DATA}: {', '.join(missing)}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def shakespeare_path(shared_data: Path) -> Path:
    return shared_data / "tinyshakespeare.txt"


@pytest.fixture(scope="session")
def gpt2_tiktoken_path(shared_data: Path) -> Path:
    return shared_data / "gpt2.tiktoken"
