"""The Step Functions workflow's tasks, one core call each: the handlers in ``lambdas/`` parse a typed
event, call one function here with the store and the cluster, and return its result as JSON.

- ``run_state``: the run's part of the execution payload (``$.run``);
- ``ports``: what the tasks need from the outside (the lifecycle store, the cluster), as protocols;
- ``leases``: the run's two locks (DynamoDB's and the cluster's own) and the time the items show;
- ``start`` (ValidateInput, Preflight), ``planning`` (LoadQueues), ``control`` (ControlCheck),
  ``park`` (ParkRun), ``verify`` (VerifyRound), ``run_report`` (ReportRun), ``finish`` (FinishRun),
  ``failure`` (Cleanup): one module per task, named for its job. RunBatch's is ``queue_balancer.batch_run``.
"""
