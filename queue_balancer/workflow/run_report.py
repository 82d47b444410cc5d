"""ReportRun: the run's before/after for the SNS notification, ``last-report`` and the metrics.

The before figures are the ones LoadQueues kept (``planning.report_dict``, a members plan's
``distribution_dict``); the after figures come from the cluster as it is now. The stored report has a
Markdown summary (as notified), a text one (for a terminal) and a bounded JSON one (``--format json``).
"""

from __future__ import annotations

from dataclasses import dataclass

from queue_balancer.lifecycle import Outcome, RunInput
from queue_balancer.members import MembersPlan, plan_members
from queue_balancer.members_run import MembersSummary
from queue_balancer.model import JsonDict
from queue_balancer.report import Report, RunSummary, subject_line, summary_markdown, summary_text
from queue_balancer.workflow.leases import now
from queue_balancer.workflow.planning import report_from_dict
from queue_balancer.workflow.ports import ClusterApi, LifecycleStore
from queue_balancer.workflow.run_state import RunState

FAILED_CHANGES_LISTED = 50
"""Failed member changes named in the stored JSON report at the most (an item has a size limit)."""


@dataclass(frozen=True)
class Summarized:
    """A run's summary in every form the report needs, leaders' or members' alike."""

    what: str
    figures: JsonDict
    markdown: str
    text: str
    spreads: str
    skipped: int
    spread_after: int


@dataclass(frozen=True)
class RunReport:
    """The notification (``subject``, ``message``) and the figures the metrics publish."""

    subject: str
    message: str
    skipped: int
    spread_after: int
    seconds: float

    def to_dict(self) -> JsonDict:
        return {"subject": self.subject, "message": self.message}


def report_run(
    db: LifecycleStore, client: ClusterApi, config: RunInput, run: RunState, execution: str
) -> RunReport:
    """Summarize the run against the cluster now, store the report, word the notification."""
    meta = db.meta(run.run_id)
    outcome = run.outcome or Outcome.COMPLETED.value
    rounds = f"{run.round} round{'s' if run.round != 1 else ''}"
    seconds = now() - run.started_at
    summarize = _members_summary if config.members else _leaders_summary
    summary = summarize(db, client, config, run, meta, seconds)
    header = (
        f"**queue-balancer** {summary.what} `{run.run_id}` on cluster `{run.cluster}`: {outcome} "
        f"({rounds}, execution `{execution}`)"
    )
    message = header + "\n\n" + summary.markdown
    kind = " members run" if config.members else ""
    subject = subject_line(f"queue-balancer: {run.cluster}{kind} {outcome}, {summary.spreads}")
    text = f"{summary.what} {run.run_id} on cluster {run.cluster}: {outcome} ({rounds})\n\n" + summary.text
    brief = {"run_id": run.run_id, "cluster": run.cluster, "outcome": outcome, "rounds": run.round}
    db.put_meta(
        run.run_id,
        outcome=outcome,
        summary=message,  # Markdown, as the notification says it
        summary_text=text,  # for a terminal
        report={**brief, **summary.figures},  # for --format json, bounded for a DynamoDB item
        subject=subject,
        finished_at=int(now()),
    )
    return RunReport(subject, message, summary.skipped, summary.spread_after, seconds)


def _leaders_summary(
    db: LifecycleStore, client: ClusterApi, config: RunInput, run: RunState, meta: JsonDict, seconds: float
) -> Summarized:
    after = Report.of(client.snapshot(), config.plan_options())
    before = report_from_dict(meta["before"]) if "before" in meta else after
    summary = RunSummary(before, after, tuple(db.results(run.run_id)), seconds)
    return Summarized(
        what="run",
        figures=summary.brief_dict(),
        markdown=summary_markdown(summary),
        text=summary_text(summary),
        spreads=f"spread {before.spread} -> {after.spread}",
        skipped=len(after.skipped),
        spread_after=after.spread,
    )


def _members_summary(
    db: LifecycleStore, client: ClusterApi, config: RunInput, run: RunState, meta: JsonDict, seconds: float
) -> Summarized:
    after = plan_members(client.members_snapshot(), config.members_options())
    planned = MembersPlan.from_dict(meta["before"]) if "before" in meta else after
    summary = MembersSummary(planned, after, tuple(db.member_results(run.run_id)), seconds)
    return Summarized(
        what="members run",
        figures=summary.to_dict(limit=FAILED_CHANGES_LISTED),
        markdown=summary.markdown(),
        text=summary.text(),
        spreads=f"members spread {summary.spread_before} -> {summary.spread_after}",
        skipped=len(after.skipped),
        spread_after=summary.spread_after,
    )
