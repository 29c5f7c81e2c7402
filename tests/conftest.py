"""Shared fixtures (the real YOOCHOOSE sample, an embedded broker) and the automatic ``broker`` marker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.workloads import RSC15_DIR

if TYPE_CHECKING:
    from stream_worker.broker import EmbeddedBroker

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test using the ``broker`` fixture (directly or through another fixture) is marked ``broker``."""
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)


@pytest.fixture(scope="session")
def rsc15_dir() -> Path:
    if not (RSC15_DIR / "yoochoose-clicks-100k_train_tr.txt").is_file():
        pytest.skip(f"real YOOCHOOSE sample not found at {RSC15_DIR}")
    return RSC15_DIR


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """An embedded tansu broker on a free port for the whole test session, stopped by its own PID at the end.

    Memory storage: use a fresh topic name per test (e.g. with uuid) so tests do not see each other's data.
    """
    from stream_worker.broker import EmbeddedBroker

    embedded = EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log")
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()
