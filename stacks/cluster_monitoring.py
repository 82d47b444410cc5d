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


def cluster_alarms(
    scope: Construct,
    *,
    cluster_name: str,
    node_count: int,
    amqp_targets: elbv2.NetworkTargetGroup,
    topic: sns.ITopic,
) -> ClusterAlarms:
    """Every alarm of the cluster, each notifying ``topic`` when it fires and when it clears."""
    more_or_equal = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
    alarms = ClusterAlarms(
        nodes_below_expected=amqp_targets.metrics.healthy_host_count(
            statistic="Minimum", period=MINUTE
        ).create_alarm(
            scope,
            "NodesBelowExpected",
            alarm_description=f"Fewer than {node_count} RabbitMQ nodes accept AMQP connections behind the "
            "load balancer",
            threshold=node_count,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluation_periods=3,
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
        ),
        memory_high=node_metric(cluster_name, "MemoryUsedOfWatermark", "Maximum").create_alarm(
            scope,
            "MemoryHigh",
            alarm_description="A node uses 90% of its memory high watermark; at 100% RabbitMQ blocks publishers",
            threshold=90,
            comparison_operator=more_or_equal,
            evaluation_periods=5,
            datapoints_to_alarm=3,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        ),
        disk_low=node_metric(cluster_name, "DiskFreeOverLimit", "Minimum").create_alarm(
            scope,
            "DiskLow",
            alarm_description="A node's free disk is within 1.5x of its disk_free_limit; at 1x RabbitMQ "
            "blocks publishers",
            threshold=1.5,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=5,
            datapoints_to_alarm=3,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        ),
        partitioned=node_metric(cluster_name, "Partitions", "Maximum").create_alarm(
            scope,
            "Partitioned",
            alarm_description="A node sees a network partition: with pause_minority the minority side has "
            "paused; check the nodes' logs and the network between the zones",
            threshold=1,
            comparison_operator=more_or_equal,
            evaluation_periods=2,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        ),
        # A replacement leaves a member not running for a minute or two (drain, then forget); longer means
        # a stale member, a dead vote in pause_minority (docs/deploy.md, "Replace or upgrade a node").
        members_not_running=node_metric(cluster_name, "MembersNotRunning", "Maximum").create_alarm(
            scope,
            "MembersNotRunning",
            alarm_description="A cluster member has not been running for 10 minutes: a stopped or stale "
            "member counts as a dead vote in pause_minority (forget it: docs/deploy.md)",
            threshold=1,
            comparison_operator=more_or_equal,
            evaluation_periods=10,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        ),
        metrics_missing=node_metric(cluster_name, "RunningNodes", "SampleCount").create_alarm(
            scope,
            "MetricsMissing",
            alarm_description="No node has published the cluster's figures for 5 minutes: every other "
            "RabbitMQ alarm is blind (the nodes or their rabbitmq-metrics timer are down)",
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluation_periods=5,
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
        ),
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
