"""Checks every synthesized template must pass: cdk-nag, cfn-lint, IAM scoped to named resources."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cfnlint.api import lint

from tests.infra.conftest import REGION

# Actions that support no resource-level permissions (IAM: "Resource": "*" is the only form), or, for
# ssm:SendCommand on instance/* and the lifecycle actions on autoScalingGroup:*, are limited by a tag
# condition (checked separately).
WILDCARD_ONLY_ACTIONS = frozenset(
    {
        "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:DescribeAutoScalingGroups",
        "ec2:DescribeInstances",
        "cloudwatch:PutMetricData",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "xray:GetSamplingRules",
        "xray:GetSamplingTargets",
        "logs:CreateLogDelivery",
        "logs:GetLogDelivery",
        "logs:UpdateLogDelivery",
        "logs:DeleteLogDelivery",
        "logs:ListLogDeliveries",
        "logs:PutResourcePolicy",
        "logs:DescribeResourcePolicies",
        "logs:DescribeLogGroups",
        "ec2:CreateNetworkInterface",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DeleteNetworkInterface",
        "ec2:AssignPrivateIpAddresses",
        "ec2:UnassignPrivateIpAddresses",
        "ssm:GetCommandInvocation",
    }
)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def iam_statements(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(logical id, statement) of every identity policy of the template."""
    for logical_id, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        documents = []
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            documents.append(props["PolicyDocument"])
        elif resource["Type"] == "AWS::IAM::Role":
            documents.extend(p["PolicyDocument"] for p in props.get("Policies", []))
        for document in documents:
            for statement in as_list(document["Statement"]):
                yield logical_id, statement


def wildcard_violations(template: dict[str, Any]) -> list[str]:
    """Statements granting '*' (or an ARN ending in '*') for actions that could name their resource."""
    problems = []
    for logical_id, statement in iam_statements(template):
        resources = as_list(statement.get("Resource", []))
        actions = set(as_list(statement["Action"]))
        rendered = [json.dumps(r) for r in resources]
        if any(r == '"*"' for r in rendered):
            extra = actions - WILDCARD_ONLY_ACTIONS
            if extra:
                problems.append(f"{logical_id}: {sorted(extra)} on '*'")
        elif any(r.endswith('*"]]}') or r.endswith('*"') for r in rendered):
            conditions = statement.get("Condition", {}).get("StringEquals", {})
            tag_scoped = {
                "ssm:resourceTag/": {"ssm:SendCommand"},
                "autoscaling:ResourceTag/": {
                    "autoscaling:CompleteLifecycleAction",
                    "autoscaling:RecordLifecycleActionHeartbeat",
                },
            }
            if not any(
                actions <= allowed and any(k.startswith(prefix) for k in conditions)
                for prefix, allowed in tag_scoped.items()
            ):
                problems.append(f"{logical_id}: {sorted(actions)} on {rendered}")
        if any(action.endswith("*") for action in actions):
            problems.append(f"{logical_id}: wildcard action in {sorted(actions)}")
    return problems


def nag_findings(messages: list[tuple[str, str]]) -> list[str]:
    """cdk-nag errors and warnings that no suppression covers (and rules that could not be evaluated)."""
    return [
        data
        for level, data in messages
        if ("ERROR" in level or "WARN" in level)
        and ("AwsSolutions-" in data or "CdkNagValidationFailure" in data)
    ]


def nag_report(outdir: Path, stack_name: str) -> list[dict[str, str]]:
    """cdk-nag's CSV report of the stack: one row per rule and resource it evaluated."""
    path = outdir / f"AwsSolutions--{stack_name}-NagReport.csv"
    with path.open(newline="") as report:
        return list(csv.DictReader(report))


def suppression_reasons(template: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(logical id, rule, reason) of every cdk-nag suppression in the template."""
    found = []
    for logical_id, resource in template["Resources"].items():
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            found.append((logical_id, rule["id"], rule.get("reason", "")))
    return found


def cfn_lint_errors(template: dict[str, Any]) -> list[str]:
    """cfn-lint's errors (E*; warnings such as hard-coded AZs are accepted)."""
    matches = lint(json.dumps(template), regions=[REGION])
    return [
        f"{m.rule.id} {m.message} ({'/'.join(map(str, m.path))})"
        for m in matches
        if m.rule.id.startswith("E")
    ]
