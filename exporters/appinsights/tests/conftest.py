"""Fixtures: a real ingestion endpoint on 127.0.0.1 (port 0) that checks every envelope it receives."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from appinsights_helpers import Ingestion, serve


@pytest.fixture
def ingestion() -> Iterator[Ingestion]:
    """A live endpoint; fails the test if any envelope it received broke the schema."""
    with serve(Ingestion()) as state:
        yield state
    assert state.problems == []
