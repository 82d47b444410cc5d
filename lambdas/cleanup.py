"""Cleanup: where every Catch of the workflow leads. Undo, verify, write IDLE, word the notification.

Removes the temporary ``queue-balancer-*`` policies of dead runs, this one's included
(``movers.cleanup``; the live holder of the cluster's lock keeps its own), so each queue falls back to
its own policy; gives back the cluster's lock (the CLI's, ``queue_balancer.lock``); lists the queues
whose mirrors are not (yet) in sync; marks the lifecycle IDLE with the failure; returns the subject and
message of the failure notification. Policies are only touched while this run still holds the DynamoDB
lock: otherwise they may belong to the run that holds it now.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, cluster_lock, iso, logger, store, task
from lambdas.errors import LockLost
from lambdas.run_state import RunState
from queue_balancer.lifecycle import Outcome, finished
from queue_balancer.model import JsonDict, QueueType
from queue_balancer.movers import cleanup
from queue_balancer.report import subject_line

LISTED = 20


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    run = RunState.from_dict(event["run"])
    error, reason = describe_error(event.get("error") or {})
    db = store()
    lock = db.lock(run.cluster) or {}
    lines = [
        f"**queue-balancer** run `{run.run_id}` on cluster `{run.cluster}` failed: `{error}`",
        "",
        reason,
        "",
    ]
    if lock.get("run_id") == run.run_id:
        client = cluster().client
        held = cluster_lock(run.run_id, client=client)
        # This run's policies are leftovers now; another live holder's (a CLI run that took an expired
        # lock) are moves under way.
        removed = cleanup(client, held.live_runs() - {held.run_id})
        held.release()
        lines.append(
            f"Cleanup removed {len(removed)} temporary polic{'y' if len(removed) == 1 else 'ies'}"
            + (": " + ", ".join(f"`{v}`/`{n}`" for v, n in removed[:LISTED]) if removed else ".")
        )
        unsynced = [
            q
            for q in client.snapshot().queues
            if q.type is QueueType.CLASSIC and set(q.replicas) - set(q.in_sync)
        ]
        if unsynced:
            lines.append(
                f"Queues whose mirrors are not in sync yet ({len(unsynced)}; their own policy "
                "re-synchronises them):"
            )
            lines += [f"- `{q.vhost}` / `{q.name}` on {q.leader}" for q in unsynced[:LISTED]]
        else:
            lines.append("Every mirrored queue is in sync.")
    else:
        lines.append("The run no longer held the cluster's lock: policies left to the run that holds it.")
    lines.append(
        f"Moves: {run.done} done, {run.failed} failed, {max(run.plan_moves - run.attempted, 0)} not started."
    )
    # The reason, for `last-report`, `status`, `info` and `run --wait` (the lifecycle keeps the error's name).
    db.put_meta(run.run_id, outcome=f"{Outcome.FAILED.value}: {error}", error=error, reason=reason)
    record = db.lifecycle(run.cluster)
    if record.run_id == run.run_id:
        try:
            db.save(
                record, finished(record, f"{Outcome.FAILED.value}: {error}", now=iso(), counts=run.counts)
            )
        except LockLost:
            logger.info("a new run took the lifecycle meanwhile")
    logger.error("run failed", extra={"error": error, "reason": reason})
    subject = subject_line(f"queue-balancer: {run.cluster} run FAILED ({error})")
    return {"subject": subject, "message": "\n".join(lines), "run": replace(run, next="").to_dict()}


def describe_error(error: dict[str, Any]) -> tuple[str, str]:
    """(name, readable reason) of a caught error; a Lambda's Cause is its JSON error document."""
    name = str(error.get("Error") or "Unknown")
    cause = str(error.get("Cause") or "")
    try:
        document = json.loads(cause)
    except ValueError:
        return name, cause
    if isinstance(document, dict) and "errorMessage" in document:
        return name, str(document["errorMessage"])
    return name, cause
