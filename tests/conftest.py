"""Shared gates: tests on real data run only where HQBENCH_DATA points at it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def real_data() -> Path:
    """``$HQBENCH_DATA`` (imagenet/, sar-ships/, weights/), or skip saying why."""
    root = os.environ.get("HQBENCH_DATA")
    if not root or not (Path(root) / "imagenet").is_dir():
        pytest.skip("HQBENCH_DATA is unset or holds no imagenet/: real-data test not run")
    return Path(root)
