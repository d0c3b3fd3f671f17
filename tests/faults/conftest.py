"""Fixtures of the fault suite: a fake OpenAI-compatible endpoint on loopback that fails on command."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_endpoint import FakeEndpoint  # noqa: E402


@pytest.fixture
def endpoint():
    """A fresh endpoint per test answering 'positive'; the test sets its rule, faults and limits."""
    with FakeEndpoint("positive", hang_s=5.0) as ep:
        yield ep
