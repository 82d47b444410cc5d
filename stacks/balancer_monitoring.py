"""What an operator watches of the workflow: the failed-run and cleanup-failure alarms and the dashboard."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from queue_balancer.contract import METRICS_NAMESPACE, SERVICE_NAME


def failed_runs_alarm(
    scope: Construct, state_machine: sfn.StateMachine, topic: sns.ITopic, cluster_name: str
) -> cloudwatch.Alarm:
    """Alarm (to the topic) when a run fails, times out or is aborted: an aborted run (StopExecution) leaves
    the lifecycle item, the lock and any temporary policy behind, which a human must clear."""
    period = Duration.minutes(5)
    failed = cloudwatch.MathExpression(
        expression="FILL(failed, 0) + FILL(timedOut, 0) + FILL(aborted, 0)",
        using_metrics={
            "failed": state_machine.metric_failed(statistic="Sum", period=period),
            "timedOut": state_machine.metric_timed_out(statistic="Sum", period=period),
            "aborted": state_machine.metric_aborted(statistic="Sum", period=period),
        },
        label="Failed, timed-out or aborted runs",
        period=period,
    )
    return _on_first(
        scope,
        "FailedRuns",
        failed,
        topic,
        f"A queue balancer run of {cluster_name} failed, timed out or was aborted",
    )


def cleanup_failures_alarm(
    scope: Construct, cleanup: lambda_.IFunction, topic: sns.ITopic, cluster_name: str
) -> cloudwatch.Alarm:
    """Alarm (to the topic) when Cleanup fails: invoked by EventBridge for a run that ended without cleaning
    up, its failure leaves that run's locks, temporary policies and lifecycle behind (the on-failure
    destination sends the event and the error to the same topic)."""
    return _on_first(
        scope,
        "CleanupFailures",
        cleanup.metric_errors(statistic="Sum", period=Duration.minutes(5)),
        topic,
        f"Cleanup of a queue balancer run of {cluster_name} failed: its locks, temporary policies or "
        "lifecycle may be left behind (`queue-balancer status`, `reset`)",
    )


def _on_first(
    scope: Construct,
    name: str,
    metric: cloudwatch.Metric | cloudwatch.MathExpression,
    topic: sns.ITopic,
    description: str,
) -> cloudwatch.Alarm:
    """Alarm ``name`` to the topic as soon as ``metric`` counts one in its period."""
    alarm = metric.create_alarm(
        scope,
        name,
        alarm_description=description,
        threshold=1,
        comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluation_periods=1,
        treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
    )
    alarm.add_alarm_action(cloudwatch_actions.SnsAction(topic))
    return alarm


def _metric(name: str, statistic: str, label: str) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name=name,
        dimensions_map={"service": SERVICE_NAME},
        statistic=statistic,
        period=Duration.hours(1),
        label=label,
    )


def balancer_dashboard(
    scope: Construct, name: str, state_machine: sfn.StateMachine, alarm: cloudwatch.Alarm
) -> cloudwatch.Dashboard:
    """Moves, spread, runs and their duration, and the alarm, on one page named ``name``."""
    hour = Duration.hours(1)
    dashboard = cloudwatch.Dashboard(scope, "Dashboard", dashboard_name=name)
    dashboard.add_widgets(
        cloudwatch.GraphWidget(
            title="Moves per hour",
            left=[
                _metric("MovesDone", "Sum", "done"),
                _metric("MovesSkipped", "Sum", "skipped"),
                _metric("MovesFailed", "Sum", "failed"),
            ],
            width=12,
        ),
        cloudwatch.GraphWidget(
            title="Spread after a run (max - min leaders per node)",
            left=[_metric("SpreadAfter", "Maximum", "spread after")],
            left_annotations=[cloudwatch.HorizontalAnnotation(value=1, label="balanced")],
            width=12,
        ),
    )
    dashboard.add_widgets(
        cloudwatch.GraphWidget(
            title="Runs",
            left=[
                state_machine.metric_started(statistic="Sum", period=hour, label="started"),
                state_machine.metric_succeeded(statistic="Sum", period=hour, label="succeeded"),
                state_machine.metric_failed(statistic="Sum", period=hour, label="failed"),
                state_machine.metric_timed_out(statistic="Sum", period=hour, label="timed out"),
                state_machine.metric_aborted(statistic="Sum", period=hour, label="stopped"),
            ],
            width=12,
        ),
        cloudwatch.GraphWidget(
            title="Run duration (s)",
            left=[_metric("RunDuration", "Average", "average"), _metric("RunDuration", "Maximum", "max")],
            width=8,
        ),
        cloudwatch.AlarmStatusWidget(title="Alarm", alarms=[alarm], width=4),
    )
    return dashboard
