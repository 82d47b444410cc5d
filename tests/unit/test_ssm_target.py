"""Which node ``rabbitmqctl eval`` goes to through SSM: a tagged instance the management API reports as a
running node, never merely the lowest-sorting running instance (booting, not joined, paused, leaving)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lambdas.ssm_eval import SsmEval
from queue_balancer.contract import NODE_TAG_KEY
from queue_balancer.errors import LeaderTransferError

TAG = "queue-balancer-cluster"


@pytest.fixture(scope="module")
def moto_ec2() -> Iterator[Any]:
    """One emulated EC2 for the module (moto's start costs seconds); each test tags its own cluster."""
    with mock_aws():
        client = boto3.client("ec2", region_name="eu-west-1")
        client.image = client.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
        yield client


@pytest.fixture
def ec2(moto_ec2: Any, request: pytest.FixtureRequest) -> Any:
    moto_ec2.cluster = request.node.name[-40:]
    return moto_ec2


def launch(ec2: Any, count: int, *tags: dict[str, str]) -> list[dict[str, Any]]:
    tag_list = [{"Key": TAG, "Value": ec2.cluster}, *tags]
    instances: list[dict[str, Any]] = ec2.run_instances(
        ImageId=ec2.image,
        MinCount=count,
        MaxCount=count,
        InstanceType="t3.micro",
        TagSpecifications=[{"ResourceType": "instance", "Tags": tag_list}],
    )["Instances"]
    return instances


def target(ec2: Any, nodes: list[str]) -> str:
    return SsmEval(None, ec2, TAG, ec2.cluster, "doc", lambda: nodes).instance()


def test_the_target_is_an_instance_whose_node_the_management_api_reports_running(ec2: Any) -> None:
    instances = sorted(launch(ec2, 3), key=lambda i: i["InstanceId"])
    joined = instances[-1]  # the highest-sorting: the old choice would have been instances[0]
    host = joined["PrivateDnsName"]
    assert target(ec2, [f"rabbit@{host}"]) == joined["InstanceId"]
    assert target(ec2, [f"rabbit@{host.split('.')[0]}"]) == joined["InstanceId"]  # short node names
    assert target(ec2, [f"rabbit@{joined['PrivateIpAddress']}"]) == joined["InstanceId"]


def test_no_running_node_among_the_tagged_instances_is_an_error_naming_both_sides(ec2: Any) -> None:
    instances = launch(ec2, 2)
    with pytest.raises(
        LeaderTransferError, match=r"is a running node of the cluster \(rabbit@elsewhere\)"
    ) as error:
        target(ec2, ["rabbit@elsewhere"])
    assert all(i["InstanceId"] in str(error.value) for i in instances)
    with pytest.raises(LeaderTransferError, match=r"\(none\)"):
        target(ec2, [])


def test_an_instance_that_names_its_node_by_tag_is_matched_by_that_name(ec2: Any) -> None:
    """The local emulation: every node is on localhost, so the tag tells them apart."""
    first = launch(ec2, 1, {"Key": NODE_TAG_KEY, "Value": "qb1@localhost"})[0]
    second = launch(ec2, 1, {"Key": NODE_TAG_KEY, "Value": "qb2@localhost"})[0]
    assert target(ec2, ["qb2@localhost"]) == second["InstanceId"]
    assert target(ec2, ["qb1@localhost", "qb2@localhost"]) == min(first["InstanceId"], second["InstanceId"])
