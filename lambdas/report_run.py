"""ReportRun: the before/after of the run for the SNS notification, ``last-report`` and the metrics."""

from __future__ import annotations

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, metrics, store, task
from lambdas.planning import report_from_dict
from queue_balancer.lifecycle import RunInput
from queue_balancer.model import JsonDict
from queue_balancer.report import Report, RunSummary, subject_line, summary_markdown, summary_text
from queue_balancer.workflow.leases import now
from queue_balancer.workflow.run_state import RunState


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    config = RunInput.parse(event["config"])
    run = RunState.from_dict(event["run"])
    db = store()
    options = config.plan_options()
    after = Report.of(cluster().client.snapshot(), options)
    meta = db.meta(run.run_id)
    before = report_from_dict(meta["before"]) if "before" in meta else after
    summary = RunSummary(before, after, tuple(db.results(run.run_id)), now() - run.started_at)
    outcome = run.outcome or "completed"
    header = (
        f"**queue-balancer** run `{run.run_id}` on cluster `{run.cluster}`: {outcome} "
        f"({run.round} round{'s' if run.round != 1 else ''}, execution `{event['execution']}`)"
    )
    message = header + "\n\n" + summary_markdown(summary)
    subject = subject_line(
        f"queue-balancer: {run.cluster} {outcome}, spread {before.spread} -> {after.spread}"
    )
    rounds = f"{run.round} round{'s' if run.round != 1 else ''}"
    text = f"run {run.run_id} on cluster {run.cluster}: {outcome} ({rounds})\n\n" + summary_text(summary)
    brief = {"run_id": run.run_id, "cluster": run.cluster, "outcome": outcome, "rounds": run.round}
    db.put_meta(
        run.run_id,
        outcome=outcome,
        summary=message,  # Markdown, as the notification says it
        summary_text=text,  # for a terminal
        report={**brief, **summary.brief_dict()},  # for --format json, bounded for a DynamoDB item
        subject=subject,
        finished_at=int(now()),
    )
    metrics.add_metric(name="MovesSkipped", unit=MetricUnit.Count, value=len(after.skipped))
    metrics.add_metric(name="SpreadAfter", unit=MetricUnit.Count, value=after.spread)
    metrics.add_metric(name="RunDuration", unit=MetricUnit.Seconds, value=round(summary.seconds, 1))
    return {"subject": subject, "message": message}
