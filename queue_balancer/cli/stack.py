"""Where a cluster's workflow is: the outputs of its BalancerStack on AWS (``--stack NAME``, credentials and
region from the usual AWS configuration, ``--region`` overrides), or the same outputs written by the local
endpoint of ``queue-balancer local up`` (the default)."""

from __future__ import annotations

import argparse

from queue_balancer.cli.aws import Workflow, WorkflowError, aws_reason
from queue_balancer.errors import ConfigurationError

REQUIRED_OUTPUTS = (
    "StateMachineArn",
    "LifecycleTableName",
    "NotificationTopicArn",
    "ScheduleRuleName",
    "ClusterName",
)


def connect(args: argparse.Namespace) -> Workflow:
    """The workflow ``--stack NAME`` deploys on AWS, or the local endpoint's (the default)."""
    try:
        import boto3
    except ModuleNotFoundError as exc:  # pragma: no cover - the aws extra is missing
        raise ConfigurationError("the workflow commands need boto3: pip install '.[aws]'") from exc
    if args.stack:
        session = boto3.Session(region_name=args.region)
        try:
            stacks = session.client("cloudformation").describe_stacks(StackName=args.stack)["Stacks"]
        except Exception as exc:
            raise WorkflowError(f"cannot read stack {args.stack}: {aws_reason(exc)}") from exc
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
        missing = [k for k in REQUIRED_OUTPUTS if k not in outputs]
        if missing:
            raise ConfigurationError(
                f"stack {args.stack} has no output(s) {', '.join(missing)}: is it a BalancerStack?"
            )
        return Workflow(outputs, session, None, f"stack {args.stack}")
    from queue_balancer.local.cluster import default_base_dir
    from queue_balancer.local.endpoint import local_outputs

    local = local_outputs(default_base_dir())
    session = boto3.Session(
        region_name=local.Region, aws_access_key_id="local", aws_secret_access_key="local"
    )
    return Workflow(local.to_dict(), session, local.EndpointUrl, "the local endpoint")
