"""The functions' environment (the contract in ``queue_balancer.contract``), parsed once per container."""

from __future__ import annotations

import os
from functools import cache

from queue_balancer.contract import FunctionEnvironment


@cache
def settings() -> FunctionEnvironment:
    """The settings of this Lambda container (the environment does not change while it lives)."""
    return FunctionEnvironment.from_env(os.environ)
