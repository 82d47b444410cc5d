"""The functions' environment (set by the BalancerStack, see docs/aws-contract.md), parsed once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from queue_balancer.errors import ConfigurationError


@dataclass(frozen=True)
class Settings:
    cluster_name: str
    management_url: str
    secret_arn: str
    ssm_tag_key: str
    ssm_tag_value: str
    lifecycle_table: str
    notification_topic_arn: str
    amqp_port: int = 5672
    """Where AMQP answers on the management URL's host (exact message counts); optional."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Every variable of the contract, or one error naming all that are missing."""
        names = {
            "cluster_name": "CLUSTER_NAME",
            "management_url": "RABBITMQ_MANAGEMENT_URL",
            "secret_arn": "RABBITMQ_SECRET_ARN",
            "ssm_tag_key": "RABBITMQ_CLI_SSM_TAG_KEY",
            "ssm_tag_value": "RABBITMQ_CLI_SSM_TAG_VALUE",
            "lifecycle_table": "LIFECYCLE_TABLE",
            "notification_topic_arn": "NOTIFICATION_TOPIC_ARN",
        }
        missing = [var for var in names.values() if not env.get(var)]
        if missing:
            raise ConfigurationError(f"environment variable(s) not set: {', '.join(missing)}")
        port = env.get("RABBITMQ_AMQP_PORT") or "5672"
        if not port.isdigit():
            raise ConfigurationError(f"RABBITMQ_AMQP_PORT must be a port number, not {port!r}")
        return cls(**{field: env[var] for field, var in names.items()}, amqp_port=int(port))


@cache
def settings() -> Settings:
    """The settings of this Lambda container (the environment does not change while it lives)."""
    return Settings.from_env(os.environ)
