"""Shared gates: tests on real data run only where HQBENCH_DATA points at it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own folder: what a command writes by default (``outputs/``) lands there,
    never in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def real_data() -> Path:
    """``$HQBENCH_DATA`` (imagenet/, sar-ships/, weights/), or skip saying why."""
    root = os.environ.get("HQBENCH_DATA")
    if not root or not (Path(root) / "imagenet").is_dir():
        pytest.skip("HQBENCH_DATA is unset or holds no imagenet/: real-data test not run")
    return Path(root)


@pytest.fixture
def no_data(monkeypatch, tmp_path):
    """As a newcomer runs: no ``$HQBENCH_DATA`` (the embedded demo), a cache of the test's own."""
    monkeypatch.delenv("HQBENCH_DATA", raising=False)
    monkeypatch.setenv("HQBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Refuse and record every connection attempt (and DNS lookup); the test asserts the list is empty.

    Recorded rather than only raised, because some libraries swallow ``OSError`` around their probes.
    """
    import socket

    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args and isinstance(args[0], socket.socket) else args)
        raise OSError("hqbench tests: network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts
