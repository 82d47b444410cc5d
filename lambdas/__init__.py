"""Thin Lambda handlers, one module per Task state of ``statemachine/balancer.asl.json``.

Each handler parses its event, calls the domain core (``queue_balancer``) and returns JSON. The shared
edge code lives in ``settings`` (environment), ``common`` (powertools, errors, the cluster connection),
``store`` (the DynamoDB lifecycle/plan adapter), ``ssm_eval`` (``rabbitmqctl eval`` through SSM Run
Command) and ``run_state`` (the run's part of the execution payload).
"""
