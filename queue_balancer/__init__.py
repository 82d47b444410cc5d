"""Spread RabbitMQ queue leaders evenly over a cluster's nodes, safely.

The package is the domain core: it talks to RabbitMQ through the management HTTP API (and, for quorum
leader transfers, through an Erlang-eval port) and knows nothing about AWS.
"""

__version__ = "0.1.0"
