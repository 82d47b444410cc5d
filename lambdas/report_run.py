"""ReportRun: the run's before/after for the notification, ``last-report`` and the metrics
(``queue_balancer.workflow.run_report``)."""

from __future__ import annotations

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, metrics, store, task
from queue_balancer.lifecycle import RunInput
from queue_balancer.model import JsonDict
from queue_balancer.workflow.run_report import report_run
from queue_balancer.workflow.run_state import RunState


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    config = RunInput.parse(event["config"])
    run = RunState.from_dict(event["run"])
    with cluster() as access:
        report = report_run(store(), access.client, config, run, str(event["execution"]))
    metrics.add_metric(name="MovesSkipped", unit=MetricUnit.Count, value=report.skipped)
    metrics.add_metric(name="SpreadAfter", unit=MetricUnit.Count, value=report.spread_after)
    metrics.add_metric(name="RunDuration", unit=MetricUnit.Seconds, value=round(report.seconds, 1))
    return report.to_dict()
