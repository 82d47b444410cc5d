"""The local default: a real RabbitMQ cluster on loopback and an unbalanced workload to balance.

``cluster`` starts and stops the nodes, ``seed`` creates the workload, ``commands`` adds the
``queue-balancer local ...`` command group.
"""
