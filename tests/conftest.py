"""Shared pytest fixtures: paths to ../shared (fixtures and data)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found next to the repository ({SHARED}); tests need the fixtures")
    return SHARED


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    return shared_dir / "fixtures"


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data"


def read_emoji_samples(data: Path, n: int) -> tuple[list[bytes], list[str]]:
    """The first ``n`` PNGs and captions of the google ``val_concepts`` shard (real images, real captions)."""
    from kontrast.data import open_source

    images: list[bytes] = []
    captions: list[str] = []
    for record in open_source(data / "emoji" / "emoji-google-val_concepts-000000.tar"):
        if record.data and record.caption:
            images.append(record.data)
            captions.append(record.caption)
        if len(images) == n:
            break
    return images, captions


@pytest.fixture(scope="session")
def emoji_samples(data_dir: Path):
    """``emoji_samples(n) -> (png bytes, captions)`` read from ``../shared/data``."""
    return lambda n: read_emoji_samples(data_dir, n)
