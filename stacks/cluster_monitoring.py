"""What an operator watches of the cluster: alarms (to the cluster's topic) and one dashboard.

The nodes push their own figures every minute (``rabbitmq-node metrics``, namespace ``RabbitMQ``, dimension
``ClusterName``): memory and disk against RabbitMQ's limits, and the cluster as each node sees it (running
members, members that do not run, partitions, nodes in maintenance). An alarm on missing figures catches
a cluster whose nodes stopped reporting, which no threshold alarm would.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_sns as sns
from constructs import Construct

METRICS_NAMESPACE = "RabbitMQ"
MINUTE = Duration.minutes(1)


@dataclass(frozen=True)
class ClusterAlarms:
    """The cluster's alarms, by what they watch."""

    nodes_below_expected: cloudwatch.Alarm
    memory_high: cloudwatch.Alarm
    disk_low: cloudwatch.Alarm
    partitioned: cloudwatch.Alarm
    members_not_running: cloudwatch.Alarm
    metrics_missing: cloudwatch.Alarm

    def all(self) -> tuple[cloudwatch.Alarm, ...]:
        return (
            self.nodes_below_expected,
            self.memory_high,
            self.disk_low,
            self.partitioned,
            self.members_not_running,
            self.metrics_missing,
        )


def node_metric(cluster_name: str, name: str, statistic: str) -> cloudwatch.Metric:
    """A figure the nodes publish, over all nodes of the cluster."""
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name=name,
        dimensions_map={"ClusterName": cluster_name},
        statistic=statistic,
        period=MINUTE,
    )


AT_LEAST = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
AT_MOST = cloudwatch.ComparisonOperator.LESS_THAN_OR_EQUAL_TO_THRESHOLD
BELOW = cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD


@dataclass(frozen=True)
class AlarmRule:
    """When an alarm fires: ``comparison`` to ``threshold`` on ``datapoints`` (default: all) of the last
    ``periods`` minutes; missing figures breach only where silence itself is the fault."""

    alarm_id: str
    description: str
    comparison: cloudwatch.ComparisonOperator
    threshold: float
    periods: int
    datapoints: int | None = None
    missing_breaches: bool = False

    def on(self, scope: Construct, metric: cloudwatch.IMetric) -> cloudwatch.Alarm:
        missing = cloudwatch.TreatMissingData
        return cloudwatch.Alarm(
            scope,
            self.alarm_id,
            metric=metric,
            alarm_description=self.description,
            threshold=self.threshold,
            comparison_operator=self.comparison,
            evaluation_periods=self.periods,
            datapoints_to_alarm=self.datapoints,
            treat_missing_data=missing.BREACHING if self.missing_breaches else missing.NOT_BREACHING,
        )


def cluster_alarms(
    scope: Construct,
    *,
    cluster_name: str,
    node_count: int,
    amqp_targets: elbv2.NetworkTargetGroup,
    topic: sns.ITopic,
) -> ClusterAlarms:
    """Every alarm of the cluster, each notifying ``topic`` when it fires and when it clears."""

    def nodes(name: str, statistic: str) -> cloudwatch.Metric:
        return node_metric(cluster_name, name, statistic)

    healthy_hosts = amqp_targets.metrics.healthy_host_count(statistic="Minimum", period=MINUTE)
    alarms = ClusterAlarms(
        nodes_below_expected=AlarmRule(
            "NodesBelowExpected",
            f"Fewer than {node_count} RabbitMQ nodes accept AMQP connections behind the load balancer",
            BELOW,
            node_count,
            periods=3,
            missing_breaches=True,
        ).on(scope, healthy_hosts),
        memory_high=AlarmRule(
            "MemoryHigh",
            "A node uses 90% of its memory high watermark; at 100% RabbitMQ blocks publishers",
            AT_LEAST,
            90,
            periods=5,
            datapoints=3,
        ).on(scope, nodes("MemoryUsedOfWatermark", "Maximum")),
        disk_low=AlarmRule(
            "DiskLow",
            "A node's free disk is within 1.5x of its disk_free_limit; at 1x RabbitMQ blocks publishers",
            AT_MOST,
            1.5,
            periods=5,
            datapoints=3,
        ).on(scope, nodes("DiskFreeOverLimit", "Minimum")),
        partitioned=AlarmRule(
            "Partitioned",
            "A node sees a network partition: with pause_minority the minority side has paused; check the "
            "nodes' logs and the network between the zones",
            AT_LEAST,
            1,
            periods=2,
        ).on(scope, nodes("Partitions", "Maximum")),
        # A replacement leaves a member not running for a minute or two (drain, then forget); longer means
        # a stale member, a dead vote in pause_minority (docs/deploy.md, "Replace or upgrade a node").
        members_not_running=AlarmRule(
            "MembersNotRunning",
            "A cluster member has not been running for 10 minutes: a stopped or stale member counts as a "
            "dead vote in pause_minority (forget it: docs/deploy.md)",
            AT_LEAST,
            1,
            periods=10,
        ).on(scope, nodes("MembersNotRunning", "Maximum")),
        metrics_missing=AlarmRule(
            "MetricsMissing",
            "No node has published the cluster's figures for 5 minutes: every other RabbitMQ alarm is "
            "blind (the nodes or their rabbitmq-metrics timer are down)",
            BELOW,
            1,
            periods=5,
            missing_breaches=True,
        ).on(scope, nodes("RunningNodes", "SampleCount")),
    )
    action = cloudwatch_actions.SnsAction(topic)
    for alarm in alarms.all():
        alarm.add_alarm_action(action)
        alarm.add_ok_action(action)
    return alarms


def cluster_dashboard(
    scope: Construct, *, cluster_name: str, node_count: int, alarms: ClusterAlarms
) -> cloudwatch.Dashboard:
    """Membership, partitions, memory and disk of the cluster, and its alarms, on one page."""
    dashboard = cloudwatch.Dashboard(scope, "Dashboard", dashboard_name=f"rabbitmq-{cluster_name}")
    dashboard.add_widgets(
        cloudwatch.GraphWidget(
            title="Members (as the nodes see them)",
            left=[
                node_metric(cluster_name, "RunningNodes", "Minimum").with_(label="running (min)"),
                node_metric(cluster_name, "ClusterMembers", "Maximum").with_(label="members (max)"),
                node_metric(cluster_name, "MembersNotRunning", "Maximum").with_(label="not running (max)"),
                node_metric(cluster_name, "NodesInMaintenance", "Maximum").with_(label="drained (max)"),
            ],
            left_annotations=[cloudwatch.HorizontalAnnotation(value=node_count, label="expected")],
            width=12,
        ),
        cloudwatch.GraphWidget(
            title="Partitions seen",
            left=[node_metric(cluster_name, "Partitions", "Maximum").with_(label="partitions")],
            width=12,
        ),
    )
    dashboard.add_widgets(
        cloudwatch.GraphWidget(
            title="Memory used of the high watermark (%)",
            left=[node_metric(cluster_name, "MemoryUsedOfWatermark", "Maximum").with_(label="max")],
            width=8,
        ),
        cloudwatch.GraphWidget(
            title="Free disk over the limit",
            left=[node_metric(cluster_name, "DiskFreeOverLimit", "Minimum").with_(label="min")],
            width=8,
        ),
        cloudwatch.AlarmStatusWidget(title="Alarms", alarms=list(alarms.all()), width=8),
    )
    return dashboard
