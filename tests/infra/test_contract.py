"""The pieces of the stacks that need no synth: the code asset, settings, context, the wildcard check.

The ASL -> functions rule itself is the contract's (``tests/unit/test_contract.py``).
"""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
import pytest

from app import Context, cluster_settings
from queue_balancer.contract import ContractError
from stacks.balancer_props import (
    BalancedCluster,
    BalancerProps,
    BalancerSettings,
    FunctionNetwork,
    WorkflowSources,
)
from stacks.balancer_stack import BalancerStack
from stacks.lambda_asset import PipLocalBundling, asset_hash, runtime_requirements
from tests.infra.checks import wildcard_violations
from tests.source_files import write_module


def test_a_missing_asl_file_is_named_in_the_error(tmp_path: Path) -> None:
    app = cdk.App()
    with pytest.raises(ContractError, match=r"balancer\.asl\.json does not exist"):
        BalancerStack(
            app,
            "QueueBalancer",
            props=BalancerProps(
                cluster=BalancedCluster(
                    cluster_name="c",
                    management_url="http://x:15672",
                    secret="arn:aws:secretsmanager:eu-west-1:123456789012:secret:x-AbCdEf",
                    ssm_tag_key="k",
                    ssm_tag_value="v",
                ),
                network=FunctionNetwork(vpc_id="vpc-0123456789abcdef0"),
                sources=WorkflowSources(asl_path=tmp_path / "balancer.asl.json"),
            ),
        )


def test_runtime_requirements_are_the_projects_less_the_lambda_runtimes() -> None:
    requirements = runtime_requirements()
    names = [r.split(">")[0].split("[")[0].split("=")[0].strip() for r in requirements]
    assert "requests" in names and "aws-lambda-powertools" in names
    assert "boto3" not in names


def test_local_bundling_copies_both_packages_without_caches(tmp_path: Path) -> None:
    lambdas, core, out = tmp_path / "lambdas", tmp_path / "queue_balancer", tmp_path / "out"
    write_module(lambdas, "start_move")
    write_module(core, "planner", "PLAN = 1\n")
    (core / "__pycache__").mkdir()
    (core / "__pycache__" / "planner.cpython-312.pyc").write_bytes(b"x")
    out.mkdir()
    assert PipLocalBundling([lambdas, core], requirements=[]).try_bundle(str(out)) is True
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "lambdas/start_move.py",
        "queue_balancer/planner.py",
    ]


def test_asset_hash_follows_sources_and_requirements(tmp_path: Path) -> None:
    lambdas = tmp_path / "lambdas"
    write_module(lambdas, "start_move")
    first = asset_hash([lambdas], ["requests"])
    assert asset_hash([lambdas], ["requests"]) == first
    assert asset_hash([lambdas], ["requests<3"]) != first
    write_module(lambdas, "start_move", "def handler(event, context):\n    return 1\n")
    assert asset_hash([lambdas], ["requests"]) != first


@pytest.mark.parametrize(
    ("cron", "expression"),
    [
        (None, "cron(0 3 * * ? *)"),
        ("15 2 ? * MON-FRI *", "cron(15 2 ? * MON-FRI *)"),
        ("cron(0 4 * * ? *)", "cron(0 4 * * ? *)"),
    ],
)
def test_schedule_expression(cron: str | None, expression: str) -> None:
    assert BalancerSettings(schedule_cron=cron).schedule_expression() == expression


def test_schedule_rejects_a_five_field_cron() -> None:
    with pytest.raises(ValueError, match="six fields"):
        BalancerSettings(schedule_cron="0 3 * * *").schedule_expression()


def test_context_values_from_the_command_line_are_parsed() -> None:
    app = cdk.App(
        context={"nodeCount": "5", "subnetIds": "subnet-a, subnet-b", "availabilityZones": '["x1a","x1b"]'}
    )
    ctx = Context(app)
    assert ctx.integer("nodeCount", 3) == 5
    assert ctx.strings("subnetIds") == ("subnet-a", "subnet-b")
    assert ctx.strings("availabilityZones") == ("x1a", "x1b")
    with pytest.raises(ValueError, match="availabilityZones: give three"):
        cluster_settings(ctx)
    # No zones named: none assumed; the stack looks the account's up.
    assert cluster_settings(Context(cdk.App())).availability_zones == ()
    assert Context(cdk.App(context={"vpcEndpoints": "true"})).flag("vpcEndpoints", False) is True


def test_the_wildcard_check_catches_an_unscoped_grant() -> None:
    template = {
        "Resources": {
            "Bad": {
                "Type": "AWS::IAM::Policy",
                "Properties": {
                    "PolicyDocument": {
                        "Statement": [
                            {"Action": "dynamodb:PutItem", "Effect": "Allow", "Resource": "*"},
                            {
                                "Action": "ssm:SendCommand",
                                "Effect": "Allow",
                                "Resource": "arn:aws:ec2:r:a:instance/*",
                            },
                        ]
                    }
                },
            }
        }
    }
    assert len(wildcard_violations(template)) == 2


@pytest.mark.parametrize("minutes", [2, 4, 16])
def test_a_function_timeout_too_short_for_cleanups_wait_and_undo_is_refused(minutes: int) -> None:
    """aws-3 #8: at 2 minutes Cleanup could not wait for a slice at all before undoing the run."""
    with pytest.raises(ValueError, match=f"function_timeout_minutes {minutes}: from 5 .* to 15"):
        BalancerSettings(function_timeout_minutes=minutes)
    assert BalancerSettings(function_timeout_minutes=5).function_timeout_minutes == 5
