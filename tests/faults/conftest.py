"""Fault injection on the shared session cluster: the fixtures of tests/integration, reused."""

from __future__ import annotations

from tests.integration.conftest import clean_cluster, management

__all__ = ["clean_cluster", "management"]
