"""Synthesizes each stack once per session (bundling skipped) and hands the templates to the tests.

Bundling is skipped through CDK's standard ``aws:cdk:bundling-stacks`` context (``[]``): the Lambda asset is
then staged without ``pip install``, which keeps the suite offline and fast. ``python app.py`` bundles.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template
from cdk_nag import AwsSolutionsChecks

ROOT = Path(__file__).resolve().parents[2]
ASL = ROOT / "statemachine" / "balancer.asl.json"
ACCOUNT = "123456789012"
REGION = "eu-west-1"
NO_BUNDLING: dict[str, list[str]] = {"aws:cdk:bundling-stacks": []}
# What `cdk synth` with credentials caches in cdk.context.json for the zone and AMI lookups of the
# ClusterStack: supplied here, so they resolve offline exactly as they would after a real lookup.
CLUSTER_LOOKUPS: dict[str, object] = {
    f"availability-zones:account={ACCOUNT}:region={REGION}": [f"{REGION}a", f"{REGION}b", f"{REGION}c"],
    f"ssm:account={ACCOUNT}:parameterName=/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64"
    f":region={REGION}": "ami-0123456789abcdef0",
}

NO_ASL = (
    "statemachine/balancer.asl.json does not exist yet (written in parallel); the BalancerStack reads the "
    "real file, so its tests wait for it"
)


@pytest.fixture(scope="session")
def asl_text() -> str:
    """The real ASL (the BalancerStack's tests skip, with a clear reason, while it does not exist)."""
    if not ASL.exists():
        pytest.skip(NO_ASL)
    return ASL.read_text()


@dataclass
class Synthesized:
    """One synthesized app: templates and synthesis messages per stack name."""

    outdir: Path
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @classmethod
    def of(cls, app: cdk.App) -> Synthesized:
        assembly = app.synth()
        done = cls(Path(assembly.directory))
        for stack in assembly.stacks:
            done.templates[stack.stack_name] = json.loads(json.dumps(stack.template))
            done.messages[stack.stack_name] = [(str(m.level), str(m.entry.data)) for m in stack.messages]
        return done

    def template(self, stack_name: str) -> Template:
        return Template.from_json(self.templates[stack_name])

    def resources(self, stack_name: str, type_: str) -> dict[str, dict[str, Any]]:
        return {k: r for k, r in self.templates[stack_name]["Resources"].items() if r["Type"] == type_}


@pytest.fixture(scope="session")
def cluster_synth(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    """The ClusterStack alone (it needs no ASL), with cdk-nag as in app.py."""
    from stacks.cluster_settings import ClusterSettings
    from stacks.cluster_stack import ClusterStack

    app = cdk.App(
        context={**NO_BUNDLING, **CLUSTER_LOOKUPS}, outdir=str(tmp_path_factory.mktemp("cluster-cdk-out"))
    )
    ClusterStack(
        app,
        "RabbitMqCluster",
        settings=ClusterSettings(
            availability_zones=(f"{REGION}a", f"{REGION}b", f"{REGION}c"),
            notification_email="ops@example.com",
        ),
        env=cdk.Environment(account=ACCOUNT, region=REGION),
    )
    cdk.Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return Synthesized.of(app)


@pytest.fixture(scope="session")
def app_synth(tmp_path_factory: pytest.TempPathFactory, asl_text: str) -> Iterator[Synthesized]:
    """app.py's app on the real repo files: ClusterStack + BalancerStack, schedule and e-mail set."""
    from app import build_app

    context = {
        **NO_BUNDLING,
        **CLUSTER_LOOKUPS,
        "account": ACCOUNT,
        "region": REGION,
        "scheduleCron": "0 3 * * ? *",
        "notificationEmail": "ops@example.com",
    }
    yield Synthesized.of(build_app(context, outdir=str(tmp_path_factory.mktemp("app-cdk-out"))))


EXISTING = {
    "managementUrl": "http://rabbitmq.internal.example:15672",
    "secretArn": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:prod/rabbitmq-admin-AbCdEf",
    "vpcId": "vpc-0123456789abcdef0",
    "subnetIds": "subnet-0aaaaaaaaaaaaaaa1,subnet-0bbbbbbbbbbbbbbb2",
    "clusterName": "prod",
    "ssmTagKey": "rabbitmq-cluster",
    "ssmTagValue": "prod-brokers",
}


# What `cdk synth` with credentials caches in cdk.context.json for Vpc.from_lookup: the test supplies it,
# so the lookup resolves offline exactly as it would after a real lookup.
VPC_LOOKUP = {
    f"vpc-provider:account={ACCOUNT}:filter.vpc-id={EXISTING['vpcId']}:region={REGION}"
    ":returnAsymmetricSubnets=true": {
        "vpcId": EXISTING["vpcId"],
        "vpcCidrBlock": "10.20.0.0/16",
        "ownerAccountId": ACCOUNT,
        "availabilityZones": [],
        "subnetGroups": [
            {
                "name": "Private",
                "type": "Private",
                "subnets": [
                    {
                        "subnetId": subnet,
                        "cidr": f"10.20.{i * 16}.0/20",
                        "availabilityZone": f"{REGION}{zone}",
                        "routeTableId": f"rtb-0{zone * 16}",
                    }
                    for i, (subnet, zone) in enumerate(
                        zip(EXISTING["subnetIds"].split(","), "ab", strict=True)
                    )
                ],
            }
        ],
    }
}


@pytest.fixture(scope="session")
def existing_synth(tmp_path_factory: pytest.TempPathFactory, asl_text: str) -> Iterator[Synthesized]:
    """app.py's app pointed at an existing cluster through the context: the BalancerStack only."""
    from app import build_app

    context = {**NO_BUNDLING, "account": ACCOUNT, "region": REGION, **EXISTING, **VPC_LOOKUP}
    yield Synthesized.of(build_app(context, outdir=str(tmp_path_factory.mktemp("existing-cdk-out"))))
