"""Benchmarks: ``queue-balancer balance`` against RabbitMQ's built-in ``rabbitmq-queues rebalance all``.

Why a package of its own: the numbers in the README must come from a run anyone can repeat with one
command (``make bench``), on the same kind of real 3-node cluster the tests use, with both tools measured
by the same observer. Nothing here is imported by ``queue_balancer``; the bench uses its public pieces
(the local cluster, the seeder, the management client), times the balancer as its CLI, and only the
profiler drives the CLI's own building blocks in-process to see inside a run.

Modules: ``workloads`` (what is seeded), ``cluster`` (the bench's own cluster and a fresh workload per
run), ``observe`` (how the cluster is read: real-time view, settled statistics, AMQP cross-checks),
``tools`` (the two contenders as commands, the balancer from a frozen copy of the code), ``results`` (one
record per run, the markdown table), ``compare`` (``python -m bench.compare``, what ``make bench`` runs),
``profile`` (where the balancer's time goes, phase by phase) and ``stuck_mirrors`` (reproduces the
re-mirroring that RabbitMQ 3.10 sometimes never does, and tries remedies).
"""
