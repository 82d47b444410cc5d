"""ReportRun: the before/after of the run for the SNS notification, ``last-report`` and the metrics."""

from __future__ import annotations

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, metrics, store, task
from lambdas.planning import report_from_dict
from queue_balancer.lifecycle import RunInput
from queue_balancer.members import MembersPlan, plan_members
from queue_balancer.members_run import MembersSummary
from queue_balancer.model import JsonDict
from queue_balancer.report import Report, RunSummary, subject_line, summary_markdown, summary_text
from queue_balancer.workflow.leases import now
from queue_balancer.workflow.run_state import RunState


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    config = RunInput.parse(event["config"])
    run = RunState.from_dict(event["run"])
    db = store()
    meta = db.meta(run.run_id)
    outcome = run.outcome or "completed"
    rounds = f"{run.round} round{'s' if run.round != 1 else ''}"
    seconds = now() - run.started_at
    summary: RunSummary | MembersSummary
    if config.members:
        after_plan = plan_members(cluster().client.members_snapshot(), config.members_options())
        planned = MembersPlan.from_dict(meta["before"]) if "before" in meta else after_plan
        summary = MembersSummary(planned, after_plan, tuple(db.member_results(run.run_id)), seconds)
        what, figures, markdown, text = (
            "members run",
            summary.to_dict(limit=50),
            summary.markdown(),
            summary.text(),
        )
        spreads = f"members spread {summary.spread_before} -> {summary.spread_after}"
        skipped, spread_after = len(after_plan.skipped), summary.spread_after
    else:
        options = config.plan_options()
        after = Report.of(cluster().client.snapshot(), options)
        before = report_from_dict(meta["before"]) if "before" in meta else after
        summary = RunSummary(before, after, tuple(db.results(run.run_id)), seconds)
        what, figures = "run", summary.brief_dict()
        markdown, text = summary_markdown(summary), summary_text(summary)
        spreads = f"spread {before.spread} -> {after.spread}"
        skipped, spread_after = len(after.skipped), after.spread
    header = (
        f"**queue-balancer** {what} `{run.run_id}` on cluster `{run.cluster}`: {outcome} "
        f"({rounds}, execution `{event['execution']}`)"
    )
    message = header + "\n\n" + markdown
    kind = " members run" if config.members else ""
    subject = subject_line(f"queue-balancer: {run.cluster}{kind} {outcome}, {spreads}")
    text = f"{what} {run.run_id} on cluster {run.cluster}: {outcome} ({rounds})\n\n" + text
    brief = {"run_id": run.run_id, "cluster": run.cluster, "outcome": outcome, "rounds": run.round}
    db.put_meta(
        run.run_id,
        outcome=outcome,
        summary=message,  # Markdown, as the notification says it
        summary_text=text,  # for a terminal
        report={**brief, **figures},  # for --format json, bounded for a DynamoDB item
        subject=subject,
        finished_at=int(now()),
    )
    metrics.add_metric(name="MovesSkipped", unit=MetricUnit.Count, value=skipped)
    metrics.add_metric(name="SpreadAfter", unit=MetricUnit.Count, value=spread_after)
    metrics.add_metric(name="RunDuration", unit=MetricUnit.Seconds, value=round(summary.seconds, 1))
    return {"subject": subject, "message": message}
