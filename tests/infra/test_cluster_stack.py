"""ClusterStack: network, nodes, load balancer, secrets, IAM, alarms; cdk-nag and cfn-lint clean."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Match

from stacks.cluster_settings import ClusterSettings
from stacks.cluster_stack import LAUNCH_HOOK_NAME, LIFECYCLE_HOOK_NAME
from stacks.node_user_data import BOOTSTRAP_SCRIPT, USER_DATA_LIMIT, without_comment_lines
from tests.infra.checks import (
    cfn_lint_errors,
    nag_findings,
    nag_report,
    suppression_reasons,
    wildcard_violations,
)
from tests.infra.conftest import Synthesized

STACK = "RabbitMqCluster"


def _ingress(synth: Synthesized) -> list[dict[str, Any]]:
    """Every ingress rule: standalone resources plus those inline in security groups."""
    rules = [r["Properties"] for r in synth.resources(STACK, "AWS::EC2::SecurityGroupIngress").values()]
    for logical_id, group in synth.resources(STACK, "AWS::EC2::SecurityGroup").items():
        for rule in group["Properties"].get("SecurityGroupIngress", []):
            rules.append({**rule, "GroupId": {"Fn::GetAtt": [logical_id, "GroupId"]}})
    return rules


def _group_id(synth: Synthesized, prefix: str) -> dict[str, Any]:
    (logical_id,) = [k for k in synth.resources(STACK, "AWS::EC2::SecurityGroup") if k.startswith(prefix)]
    return {"Fn::GetAtt": [logical_id, "GroupId"]}


def _user_data(synth: Synthesized) -> str:
    """The launch template's user data with references shown as <Ref:...>."""
    (template,) = synth.resources(STACK, "AWS::EC2::LaunchTemplate").values()
    parts = template["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else f"<Ref:{json.dumps(p, sort_keys=True)}>" for p in parts)


def test_vpc_spans_three_azs_with_private_subnets_for_the_nodes(cluster_synth: Synthesized) -> None:
    subnets = cluster_synth.resources(STACK, "AWS::EC2::Subnet").values()
    private = [s["Properties"] for s in subnets if not s["Properties"].get("MapPublicIpOnLaunch")]
    assert sorted(s["AvailabilityZone"] for s in private) == ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    cluster_synth.template(STACK).resource_count_is("AWS::EC2::FlowLog", 1)


def test_nodes_are_an_autoscaling_group_over_the_three_private_subnets(cluster_synth: Synthesized) -> None:
    (group,) = cluster_synth.resources(STACK, "AWS::AutoScaling::AutoScalingGroup").values()
    props = group["Properties"]
    assert props["MinSize"] == "3" and "DesiredCapacity" not in props  # a deploy never resets the size
    assert len(props["VPCZoneIdentifier"]) == 3
    assert all("nodes" in ref["Ref"] for ref in props["VPCZoneIdentifier"])
    # A node paused by pause_minority fails the NLB's checks but must not be replaced (volume deleted).
    assert props["HealthCheckType"] == "EC2"
    assert len(props["TargetGroupARNs"]) == 2
    assert {"Key": "queue-balancer-cluster", "Value": "rabbitmq", "PropagateAtLaunch": True} in props["Tags"]


def test_a_rolling_update_launches_a_successor_and_waits_for_its_signal_before_taking_a_node(
    cluster_synth: Synthesized,
) -> None:
    (group,) = cluster_synth.resources(STACK, "AWS::AutoScaling::AutoScalingGroup").values()
    rolling = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
    # Every old node stays in service until its successor signalled: launch before terminate, one at a time.
    assert rolling["MaxBatchSize"] == 1
    assert rolling["MinInstancesInService"] == 3 and group["Properties"]["MaxSize"] == "4"
    assert rolling["WaitOnResourceSignals"] is True
    assert rolling["PauseTime"] == "PT45M"
    # AZRebalance / ReplaceUnhealthy would take nodes outside the one-at-a-time order during the update.
    assert {"AZRebalance", "ReplaceUnhealthy", "HealthCheck"} <= set(rolling["SuspendProcesses"])
    assert group["CreationPolicy"]["ResourceSignal"] == {"Count": 3, "Timeout": "PT45M"}


def test_the_signal_follows_membership_and_replicas(cluster_synth: Synthesized) -> None:
    """The one cfn-signal 0 of the bootstrap comes after become_member (join, forget, replicas regrown)."""
    script = BOOTSTRAP_SCRIPT.read_text()
    body = script.split("\nbootstrap() {\n", 1)[1].split("\n}\n", 1)[0]
    steps = [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert steps.index('become_member "$me"') < steps.index("signal_cloudformation 0") == len(steps) - 1
    member = script.split("\nbecome_member() {\n", 1)[1].split("\n}\n", 1)[0]
    assert [line.strip().split()[0] for line in member.splitlines()[1:]] == [
        "join_cluster", "forget_departed_members", "await_replicas",
    ]  # fmt: skip
    assert "signal_cloudformation 1" in script.split("\non_error() {\n", 1)[1].split("\n}\n", 1)[0]
    assert "'3'" in _user_data(cluster_synth).split("NODE_COUNT=", 1)[1][:4]


def _hooks(synth: Synthesized) -> dict[str, dict[str, Any]]:
    hooks = synth.resources(STACK, "AWS::AutoScaling::LifecycleHook").values()
    return {h["Properties"]["LifecycleTransition"]: h["Properties"] for h in hooks}


def test_a_termination_hook_holds_a_leaving_node_until_it_left_the_cluster(
    cluster_synth: Synthesized,
) -> None:
    props = _hooks(cluster_synth)["autoscaling:EC2_INSTANCE_TERMINATING"]
    assert props["LifecycleHookName"] == LIFECYCLE_HOOK_NAME
    assert props["DefaultResult"] == "CONTINUE" and props["HeartbeatTimeout"] == 900
    (group_id,) = cluster_synth.resources(STACK, "AWS::AutoScaling::AutoScalingGroup")
    assert props["AutoScalingGroupName"] == {"Ref": group_id}
    user_data = _user_data(cluster_synth)
    assert f"LIFECYCLE_HOOK_NAME='{LIFECYCLE_HOOK_NAME}'" in user_data


def test_a_launch_hook_holds_every_new_node_out_of_service_until_it_joined(
    cluster_synth: Synthesized,
) -> None:
    """AZRebalance, instance refresh and health replacements wait for the successor as the rolling update
    does: the launch action is completed by the bootstrap (CONTINUE) only with the success signal, and a
    node that fails or stops heartbeating is abandoned (terminated), never put in service."""
    assert set(_hooks(cluster_synth)) == {
        "autoscaling:EC2_INSTANCE_LAUNCHING",
        "autoscaling:EC2_INSTANCE_TERMINATING",
    }
    cluster_synth.template(STACK).has_resource_properties(
        "AWS::AutoScaling::LifecycleHook",
        {
            "LifecycleHookName": LAUNCH_HOOK_NAME,
            "LifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING",
            "DefaultResult": "ABANDON",
            "HeartbeatTimeout": 900,
            "AutoScalingGroupName": {"Ref": Match.string_like_regexp("^Nodes")},
        },
    )
    assert f"LAUNCH_HOOK_NAME='{LAUNCH_HOOK_NAME}'" in _user_data(cluster_synth)
    script = BOOTSTRAP_SCRIPT.read_text()
    body = script.split("\nbootstrap() {\n", 1)[1].split("\n}\n", 1)[0]
    assert (
        body.index("start_heartbeats")
        < body.index('become_member "$me"')
        < body.index("complete_launch CONTINUE")
    )
    assert "complete_launch ABANDON" in script.split("\non_error() {\n", 1)[1].split("\n}\n", 1)[0]


def test_a_node_completes_only_its_own_groups_lifecycle_actions(cluster_synth: Synthesized) -> None:
    statements = [
        s
        for p in cluster_synth.resources(STACK, "AWS::IAM::Policy").values()
        if "NodeRole" in p["Properties"]["PolicyName"]
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    lifecycle = [s for s in statements if any("Lifecycle" in a for a in _as_list(s["Action"]))]
    assert len(lifecycle) == 1 and lifecycle[0]["Sid"] == "LifecycleActions"
    assert set(lifecycle[0]["Action"]) == {
        "autoscaling:CompleteLifecycleAction",
        "autoscaling:RecordLifecycleActionHeartbeat",
    }
    # Allowed on groups carrying the cluster's tag only (naming the group would make it wait for its policy).
    assert lifecycle[0]["Condition"] == {
        "StringEquals": {"autoscaling:ResourceTag/queue-balancer-cluster": "rabbitmq"}
    }


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def test_node_logs_go_to_their_log_group(cluster_synth: Synthesized) -> None:
    (group,) = [
        g
        for k, g in cluster_synth.resources(STACK, "AWS::Logs::LogGroup").items()
        if k.startswith("NodeLogs")
    ]
    assert group["Properties"]["LogGroupName"] == "/rabbitmq/rabbitmq"
    assert group["Properties"]["RetentionInDays"] == 90
    assert "LOG_GROUP_NAME='<Ref:" in _user_data(cluster_synth)


def test_the_ami_is_pinned_in_the_context(cluster_synth: Synthesized) -> None:
    (template,) = cluster_synth.resources(STACK, "AWS::EC2::LaunchTemplate").values()
    assert template["Properties"]["LaunchTemplateData"]["ImageId"] == "ami-0123456789abcdef0"
    assert not [p for p in cluster_synth.templates[STACK].get("Parameters", {}) if "Ssm" in p]


def test_launch_template_encrypts_volumes_requires_imdsv2_and_has_no_ssh_key(
    cluster_synth: Synthesized,
) -> None:
    (template,) = cluster_synth.resources(STACK, "AWS::EC2::LaunchTemplate").values()
    data = template["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert "KeyName" not in data
    devices = {d["DeviceName"]: d["Ebs"] for d in data["BlockDeviceMappings"]}
    assert set(devices) == {"/dev/xvda", "/dev/sdf"}
    assert all(ebs["Encrypted"] is True for ebs in devices.values())
    assert devices["/dev/sdf"]["VolumeSize"] == ClusterSettings().data_volume_gib


def test_user_data_installs_the_bootstrap_script_verbatim_without_secrets(cluster_synth: Synthesized) -> None:
    user_data = _user_data(cluster_synth)
    packed = user_data.split("| gunzip > /usr/local/sbin/rabbitmq-node\n", 1)[1].split(
        "\nRABBITMQ_NODE_SCRIPT\n"
    )[0]
    installed = gzip.decompress(base64.b64decode(packed)).decode()
    assert installed == without_comment_lines(BOOTSTRAP_SCRIPT.read_text())
    assert len(user_data.encode()) < USER_DATA_LIMIT - 1024  # the references resolve to short ARNs
    settings = user_data.split("<<'RABBITMQ_NODE_SETTINGS'\n", 1)[1].split("\nRABBITMQ_NODE_SETTINGS\n", 1)[0]
    values = dict(line.split("=", 1) for line in settings.splitlines())
    assert values["COOKIE_SECRET_ARN"].startswith("'<Ref:") and "ErlangCookie" in values["COOKIE_SECRET_ARN"]
    assert (
        values["ADMIN_SECRET_ARN"].startswith("'<Ref:") and "AdminCredentials" in values["ADMIN_SECRET_ARN"]
    )
    assert values["RABBITMQ_VERSION"] == "'4.1.7'" and values["QUEUE_TYPE"] == "'quorum'"
    assert "BalancerCredentials" in values["BALANCER_SECRET_ARN"]
    assert values["CFN_RESOURCE_ID"].startswith("'NodesASG")
    assert "password" not in settings.lower() and "guest" not in settings
    assert user_data.rstrip().endswith("exec /usr/local/sbin/rabbitmq-node bootstrap")


def test_user_data_is_valid_bash(cluster_synth: Synthesized, tmp_path: Path) -> None:
    script = tmp_path / "user-data.sh"
    script.write_text(_user_data(cluster_synth))
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_internal_nlb_forwards_5672_and_15672_with_health_checks(cluster_synth: Synthesized) -> None:
    template = cluster_synth.template(STACK)
    template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
        {"Scheme": "internal", "Type": "network", "SecurityGroups": Match.any_value()},
    )
    listeners = cluster_synth.resources(STACK, "AWS::ElasticLoadBalancingV2::Listener").values()
    assert sorted((lst["Properties"]["Port"], lst["Properties"]["Protocol"]) for lst in listeners) == [
        (5672, "TCP"),
        (15672, "TCP"),
    ]
    groups = {
        g["Properties"]["Port"]: g["Properties"]
        for g in cluster_synth.resources(STACK, "AWS::ElasticLoadBalancingV2::TargetGroup").values()
    }
    assert groups[5672]["HealthCheckProtocol"] == "TCP" and groups[5672]["HealthCheckPort"] == "5672"
    assert groups[15672]["HealthCheckProtocol"] == "HTTP" and groups[15672]["HealthCheckPort"] == "15672"
    assert all(g["TargetType"] == "instance" for g in groups.values())


def test_node_ports_are_open_only_to_the_load_balancer_clients_and_the_nodes(
    cluster_synth: Synthesized,
) -> None:
    nodes = _group_id(cluster_synth, "NodeSecurityGroup")
    load_balancer = _group_id(cluster_synth, "LoadBalancerSecurityGroup")
    clients = _group_id(cluster_synth, "ClientSecurityGroup")
    to_nodes = {
        (r["FromPort"], r["ToPort"], json.dumps(r["SourceSecurityGroupId"]))
        for r in _ingress(cluster_synth)
        if r["GroupId"] == nodes and "SourceSecurityGroupId" in r
    }
    assert to_nodes == {
        (5672, 5672, json.dumps(load_balancer)),
        (15672, 15672, json.dumps(load_balancer)),
        (5672, 5672, json.dumps(clients)),
        (15672, 15672, json.dumps(clients)),
        (4369, 4369, json.dumps(nodes)),
        (25672, 25672, json.dumps(nodes)),
        (35672, 35682, json.dumps(nodes)),
    }
    assert not [r for r in _ingress(cluster_synth) if r["GroupId"] == nodes and "CidrIp" in r]


def test_load_balancer_takes_amqp_from_the_vpc_and_management_from_clients(
    cluster_synth: Synthesized,
) -> None:
    load_balancer = _group_id(cluster_synth, "LoadBalancerSecurityGroup")
    clients = _group_id(cluster_synth, "ClientSecurityGroup")
    rules = [r for r in _ingress(cluster_synth) if r["GroupId"] == load_balancer]
    assert {(r["FromPort"], r.get("CidrIp"), json.dumps(r.get("SourceSecurityGroupId"))) for r in rules} == {
        (5672, ClusterSettings().vpc_cidr, "null"),
        (15672, None, json.dumps(clients)),
    }


def test_secrets_are_generated_cookie_admin_and_balancer_credentials(cluster_synth: Synthesized) -> None:
    secrets = [
        s["Properties"] for s in cluster_synth.resources(STACK, "AWS::SecretsManager::Secret").values()
    ]
    generators = [s["GenerateSecretString"] for s in secrets]
    users = sorted(
        json.loads(g["SecretStringTemplate"])["username"] for g in generators if "SecretStringTemplate" in g
    )
    assert len(secrets) == 3 and users == ["admin", "queue-balancer"]
    assert all(g["GenerateStringKey"] == "password" for g in generators if "SecretStringTemplate" in g)
    assert all("SecretString" not in s for s in secrets)


def test_node_role_can_discover_peers_read_its_secrets_and_use_ssm(cluster_synth: Synthesized) -> None:
    (role,) = [
        r for k, r in cluster_synth.resources(STACK, "AWS::IAM::Role").items() if k.startswith("NodeRole")
    ]
    assert "AmazonSSMManagedInstanceCore" in json.dumps(role["Properties"]["ManagedPolicyArns"])
    (policy,) = [
        p["Properties"]["PolicyDocument"]["Statement"]
        for p in cluster_synth.resources(STACK, "AWS::IAM::Policy").values()
        if "NodeRole" in p["Properties"]["PolicyName"]
    ]
    by_sid = {s.get("Sid", json.dumps(s["Resource"])): s for s in policy}
    assert set(by_sid["PeerDiscovery"]["Action"]) == {
        "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:DescribeAutoScalingGroups",
        "ec2:DescribeInstances",
    }
    assert by_sid["NodeMetrics"]["Condition"] == {"StringEquals": {"cloudwatch:namespace": "RabbitMQ"}}
    secret_reads = [s for s in policy if "secretsmanager:GetSecretValue" in s["Action"]]
    assert sorted(s["Resource"]["Ref"][:12] for s in secret_reads) == [
        "AdminCredent",
        "BalancerCred",
        "ErlangCookie",
    ]


def test_iam_names_its_resources(cluster_synth: Synthesized) -> None:
    assert wildcard_violations(cluster_synth.templates[STACK]) == []


def test_alarms_on_nodes_memory_disk_partitions_members_and_missing_figures(
    cluster_synth: Synthesized,
) -> None:
    alarms = {
        a["Properties"]["MetricName"]: a["Properties"]
        for a in cluster_synth.resources(STACK, "AWS::CloudWatch::Alarm").values()
    }
    assert set(alarms) == {
        "HealthyHostCount",
        "MemoryUsedOfWatermark",
        "DiskFreeOverLimit",
        "Partitions",
        "MembersNotRunning",
        "RunningNodes",
    }
    assert alarms["Partitions"]["Threshold"] == 1 and alarms["MembersNotRunning"]["EvaluationPeriods"] == 10
    # Missing figures alarm: no sample at all is a breach.
    assert alarms["RunningNodes"]["Statistic"] == "SampleCount"
    assert alarms["RunningNodes"]["TreatMissingData"] == "breaching"
    assert alarms["HealthyHostCount"]["Threshold"] == 3
    assert alarms["HealthyHostCount"]["ComparisonOperator"] == "LessThanThreshold"
    assert alarms["MemoryUsedOfWatermark"]["Namespace"] == "RabbitMQ"
    assert all(
        a["AlarmActions"] and a["AlarmActions"][0]["Ref"].startswith("AlarmTopic") for a in alarms.values()
    )
    cluster_synth.template(STACK).has_resource_properties(
        "AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()}
    )
    cluster_synth.template(STACK).has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "ops@example.com"}
    )


def test_outputs_name_the_endpoints_and_the_secret(cluster_synth: Synthesized) -> None:
    outputs = cluster_synth.templates[STACK]["Outputs"]
    for name in ("AmqpEndpoint", "ManagementUrl", "AdminSecretArn", "ClientSecurityGroupId", "SsmTagKey"):
        assert name in outputs
    assert ":15672" in json.dumps(outputs["ManagementUrl"]["Value"])
    assert outputs["AdminSecretArn"]["Value"]["Ref"].startswith("AdminCredentials")


def test_a_dashboard_shows_the_cluster(cluster_synth: Synthesized) -> None:
    (dashboard,) = cluster_synth.resources(STACK, "AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for metric in ("RunningNodes", "MembersNotRunning", "Partitions", "MemoryUsedOfWatermark"):
        assert metric in body
    assert dashboard["Properties"]["DashboardName"] == "rabbitmq-rabbitmq"


def test_cdk_nag_finds_nothing_unsuppressed(cluster_synth: Synthesized) -> None:
    assert nag_findings(cluster_synth.messages[STACK]) == []
    rows = nag_report(cluster_synth.outdir, STACK)
    assert len(rows) > 20  # the AwsSolutions pack did run
    assert {r["Compliance"] for r in rows} <= {"Compliant", "Suppressed"}


def test_every_suppression_has_a_written_reason(cluster_synth: Synthesized) -> None:
    reasons = suppression_reasons(cluster_synth.templates[STACK])
    assert reasons
    assert [r for r in reasons if len(r[2]) < 60] == []


def test_cfn_lint_finds_no_errors(cluster_synth: Synthesized) -> None:
    assert cfn_lint_errors(cluster_synth.templates[STACK]) == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"queue_type": "stream"}, "queueType"),
        ({"node_count": 1}, "nodeCount must be odd"),
        ({"node_count": 4}, "nodeCount must be odd"),
        ({"node_count": 11}, "nodeCount"),
        ({"cluster_name": "bad name"}, "clusterName"),
        ({"queue_type": "classic"}, "needs RabbitMQ 3.13"),
        ({"instance_type": "m7g.large"}, "not x86-64"),
        ({"nat_gateways": 0}, "natGateways must be at least 1"),
        ({"nat_gateways": 0, "vpc_endpoints": True}, "no VPC endpoint reaches"),
        ({"availability_zones": ("eu-west-1a", "eu-west-1b")}, "give three"),
        ({"availability_zones": ("a", "b", "c")}, "not zone names"),
        ({"rabbitmq_version": "4.1"}, "major.minor.patch"),
    ],
)
def test_settings_reject_what_the_stack_cannot_build(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClusterSettings(**settings)


def test_classic_mirrored_queues_stay_available_on_3_13() -> None:
    settings = ClusterSettings(queue_type="classic", rabbitmq_version="3.13.7", erlang_version="26.2")
    assert settings.rabbitmq_major == 3


def test_zones_of_another_region_are_refused() -> None:
    settings = ClusterSettings(availability_zones=("us-east-1a", "us-east-1b", "us-east-1c"))
    with pytest.raises(ValueError, match="not zones of the region eu-west-1"):
        settings.check_zones_in("eu-west-1")


def test_vpc_endpoints_cover_every_service_the_nodes_and_lambdas_call(tmp_path: Path) -> None:
    import aws_cdk as cdk

    from stacks.cluster_stack import ClusterStack
    from tests.infra.conftest import ACCOUNT, CLUSTER_LOOKUPS, NO_BUNDLING, REGION

    app = cdk.App(context={**NO_BUNDLING, **CLUSTER_LOOKUPS}, outdir=str(tmp_path))
    stack = ClusterStack(
        app,
        "Endpoints",
        settings=ClusterSettings(vpc_endpoints=True),
        env=cdk.Environment(account=ACCOUNT, region=REGION),
    )
    template = app.synth().get_stack_by_name(stack.stack_name).template
    services = sorted(
        json.dumps(r["Properties"]["ServiceName"]).rsplit(".", 1)[-1].strip('"]}')
        for r in template["Resources"].values()
        if r["Type"] == "AWS::EC2::VPCEndpoint"
    )
    for needed in (
        "ssm",
        "ssmmessages",
        "ec2messages",
        "secretsmanager",
        "logs",
        "monitoring",
        "autoscaling",
        "cloudformation",
        "dynamodb",
        "sns",
        "ec2",
        "states",
        "xray",
        "s3",
    ):
        assert needed in services, services  # fmt: skip
