"""BalancerStack on the real ASL and lambdas/ (docs/aws-contract.md), through app.py, in both modes:
with the app's own ClusterStack and pointed at an existing cluster by the context."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from typing import Any

import pytest

from queue_balancer import eval_document
from queue_balancer.cli.stack import REQUIRED_OUTPUTS
from queue_balancer.contract import (
    CLUSTER_ACCESS,
    EVAL_ACCESS,
    FUNCTION_ACCESS,
    FUNCTION_PLACEHOLDER,
    NOTIFY_ACCESS,
    TABLE_ACCESS,
    asl_placeholders,
    snake_case,
    substitute,
)
from tests.infra.checks import (
    cfn_lint_errors,
    iam_statements,
    nag_findings,
    nag_report,
    suppression_reasons,
    wildcard_violations,
)
from tests.infra.conftest import ASL, EXISTING, Synthesized

STACK = "QueueBalancer"
CONTRACT_ENVIRONMENT = {
    "CLUSTER_NAME",
    "RABBITMQ_MANAGEMENT_URL",
    "RABBITMQ_SECRET_ARN",
    "RABBITMQ_CLI_SSM_TAG_KEY",
    "RABBITMQ_CLI_SSM_TAG_VALUE",
    "LIFECYCLE_TABLE",
    "NOTIFICATION_TOPIC_ARN",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
}


def function_names(asl_text: str) -> set[str]:
    return {m.group(1) for p in asl_placeholders(asl_text) if (m := FUNCTION_PLACEHOLDER.match(p))}


def only(resources: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    assert len(resources) == 1, sorted(resources)
    return next(iter(resources.items()))


def statements_of(synth: Synthesized, role_prefix: str) -> list[dict[str, Any]]:
    return [
        s for logical_id, s in iam_statements(synth.templates[STACK]) if logical_id.startswith(role_prefix)
    ]


def by_sid(statements: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in statements if "Sid" in s}


# --- functions -------------------------------------------------------------------------------------------


def test_one_function_per_asl_placeholder_with_the_contract_handler(
    app_synth: Synthesized, asl_text: str
) -> None:
    functions = app_synth.resources(STACK, "AWS::Lambda::Function")
    names = function_names(asl_text)
    assert names, "the ASL names no ${<Name>FunctionArn}"
    assert sorted(f["Properties"]["Handler"] for f in functions.values()) == sorted(
        f"lambdas.{snake_case(n)}.handler" for n in names
    )
    for function in functions.values():
        props = function["Properties"]
        assert props["Runtime"] == "python3.12"
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert props["VpcConfig"]["SubnetIds"] and props["VpcConfig"]["SecurityGroupIds"]


def test_functions_share_one_code_asset(app_synth: Synthesized) -> None:
    codes = {
        json.dumps(f["Properties"]["Code"])
        for f in app_synth.resources(STACK, "AWS::Lambda::Function").values()
    }
    assert len(codes) == 1


def test_function_environment_is_the_contracts(app_synth: Synthesized) -> None:
    table_id, _ = only(app_synth.resources(STACK, "AWS::DynamoDB::Table"))
    topic_id, _ = only(app_synth.resources(STACK, "AWS::SNS::Topic"))
    for function in app_synth.resources(STACK, "AWS::Lambda::Function").values():
        variables = function["Properties"]["Environment"]["Variables"]
        assert set(variables) == CONTRACT_ENVIRONMENT
        assert variables["POWERTOOLS_SERVICE_NAME"] == "queue-balancer"
        assert variables["POWERTOOLS_METRICS_NAMESPACE"] == "QueueBalancer"
        assert variables["LIFECYCLE_TABLE"] == {"Ref": table_id}
        assert variables["NOTIFICATION_TOPIC_ARN"] == {"Ref": topic_id}
        assert variables["CLUSTER_NAME"] == "rabbitmq"
        assert variables["RABBITMQ_CLI_SSM_TAG_KEY"] == "queue-balancer-cluster"
        assert ":15672" in json.dumps(variables["RABBITMQ_MANAGEMENT_URL"])
        # The balancer's own RabbitMQ user (monitoring + policymaker), not the administrator.
        assert "BalancerCredentials" in json.dumps(variables["RABBITMQ_SECRET_ARN"])


# --- state machine -----------------------------------------------------------------------------------------


def strings_outside_comments(node: Any) -> Iterator[str]:
    """Every string value of the ASL except the prose of "Comment" fields."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key != "Comment":
                yield from strings_outside_comments(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_outside_comments(item)
    elif isinstance(node, str):
        yield node


def test_substitutions_cover_every_placeholder_and_leave_no_dollar_brace(
    app_synth: Synthesized, asl_text: str
) -> None:
    _, machine = only(app_synth.resources(STACK, "AWS::StepFunctions::StateMachine"))
    substitutions = machine["Properties"]["DefinitionSubstitutions"]
    assert set(substitutions) == asl_placeholders(asl_text)
    # What CloudFormation delivers to Step Functions: each "${Key}" replaced, the rest untouched.
    delivered = substitute(asl_text, {key: f"arn:resolved:{key}" for key in substitutions})
    assert asl_placeholders(delivered) == set()
    assert [text for text in strings_outside_comments(json.loads(delivered)) if "${" in text] == []


def test_substitutions_point_at_the_right_resources(app_synth: Synthesized) -> None:
    _, machine = only(app_synth.resources(STACK, "AWS::StepFunctions::StateMachine"))
    substitutions = machine["Properties"]["DefinitionSubstitutions"]
    functions = app_synth.resources(STACK, "AWS::Lambda::Function")
    table_id, _ = only(app_synth.resources(STACK, "AWS::DynamoDB::Table"))
    topic_id, _ = only(app_synth.resources(STACK, "AWS::SNS::Topic"))
    for key, value in substitutions.items():
        if match := FUNCTION_PLACEHOLDER.match(key):
            logical_id, attribute = value["Fn::GetAtt"]
            assert attribute == "Arn"
            assert (
                functions[logical_id]["Properties"]["Handler"]
                == f"lambdas.{snake_case(match.group(1))}.handler"
            )
    assert substitutions["LifecycleTableName"] == {"Ref": table_id}
    assert substitutions["NotificationTopicArn"] == {"Ref": topic_id}


def test_definition_is_the_repo_asl_file(app_synth: Synthesized, asl_text: str) -> None:
    _, machine = only(app_synth.resources(STACK, "AWS::StepFunctions::StateMachine"))
    key = machine["Properties"]["DefinitionS3Location"]["Key"]
    assert (app_synth.outdir / f"asset.{key}").read_text() == ASL.read_text() == asl_text


def test_state_machine_has_a_fixed_name_logging_and_tracing(app_synth: Synthesized) -> None:
    _, machine = only(app_synth.resources(STACK, "AWS::StepFunctions::StateMachine"))
    props = machine["Properties"]
    assert props["StateMachineName"] == "queue-balancer-rabbitmq"
    assert props["LoggingConfiguration"]["Level"] == "ALL"
    assert props["LoggingConfiguration"]["Destinations"]
    # Inputs and outputs carry task tokens: never in the log.
    assert props["LoggingConfiguration"]["IncludeExecutionData"] is False
    assert props["TracingConfiguration"] == {"Enabled": True}


def test_state_machine_may_only_invoke_its_functions_and_touch_its_resources(app_synth: Synthesized) -> None:
    sids = by_sid(statements_of(app_synth, "StateMachineRole"))
    invoked = {json.dumps(r) for r in sids["InvokeItsFunctions"]["Resource"]}
    functions = {
        json.dumps({"Fn::GetAtt": [k, "Arn"]}) for k in app_synth.resources(STACK, "AWS::Lambda::Function")
    }
    assert invoked == functions
    assert set(sids["LifecycleItems"]["Action"]) == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    }
    assert sids["Notify"]["Action"] == "sns:Publish"
    assert json.dumps(sids["ContinueAsNew"]["Resource"]).endswith(':stateMachine:queue-balancer-rabbitmq"]]}')


def test_each_function_has_a_role_of_its_own(app_synth: Synthesized) -> None:
    functions = app_synth.resources(STACK, "AWS::Lambda::Function")
    roles = [json.dumps(f["Properties"]["Role"]) for f in functions.values()]
    assert len(set(roles)) == len(functions) == len(FUNCTION_ACCESS)


def test_only_the_functions_that_move_or_plan_queues_may_send_commands_to_the_nodes(
    app_synth: Synthesized,
) -> None:
    statements = statements_of(app_synth, "RunBatchRole")
    sids = by_sid(statements)
    (secret,) = [s for s in statements if "secretsmanager:GetSecretValue" in s["Action"]]
    assert "BalancerCredentials" in json.dumps(secret["Resource"])
    assert sids["EvalDocumentOnClusterNodes"]["Condition"] == {
        "StringEquals": {"ssm:resourceTag/queue-balancer-cluster": "rabbitmq"}
    }
    assert ":document/" in json.dumps(sids["EvalDocumentOnly"]["Resource"])
    assert "EvalDocument" in json.dumps(sids["EvalDocumentOnly"]["Resource"])
    sends = [s for s in statements if "ssm:SendCommand" in s["Action"]]
    assert {s["Sid"] for s in sends} == {"EvalDocumentOnly", "EvalDocumentOnClusterNodes"}
    assert "LifecycleTable" in json.dumps(sids["LifecycleItems"]["Resource"])
    # lambdas/store.py writes and deletes plan batches with batch_writer; ssm_eval.py finds a node by tag.
    assert "dynamodb:BatchWriteItem" in sids["LifecycleItems"]["Action"]
    assert "ec2:DescribeInstances" in sids["CommandResultsAndNodeLookup"]["Action"]
    every = list(iam_statements(app_synth.templates[STACK]))
    assert "AWS-RunShellScript" not in json.dumps(every)
    senders = {logical_id for logical_id, s in every if "ssm:SendCommand" in json.dumps(s["Action"])}
    planners = ("RunBatchRole", "LoadQueuesRole", "VerifyRoundRole")  # they plan: maintenance mode on 3.x
    assert senders and all(logical_id.startswith(planners) for logical_id in senders)


@pytest.mark.parametrize("name", sorted(FUNCTION_ACCESS))
def test_a_function_reaches_only_what_the_contract_grants_it(app_synth: Synthesized, name: str) -> None:
    granted = json.dumps(statements_of(app_synth, f"{name}Role"))
    access = FUNCTION_ACCESS[name]
    assert ("secretsmanager:GetSecretValue" in granted) == (CLUSTER_ACCESS in access)
    assert ("dynamodb:" in granted) == (TABLE_ACCESS in access)
    assert ("ssm:" in granted) == (EVAL_ACCESS in access)
    assert ("sns:Publish" in granted) == (NOTIFY_ACCESS in access)
    assert f"{name}Logs" in granted  # its own log group, not the others'
    assert all(f"{other}Logs" not in granted for other in FUNCTION_ACCESS if other != name)


def test_the_eval_document_takes_only_an_operation_and_base64_items(app_synth: Synthesized) -> None:
    _, document = only(app_synth.resources(STACK, "AWS::SSM::Document"))
    props = document["Properties"]
    assert props["DocumentType"] == "Command" and props["Name"] == eval_document.document_name("rabbitmq")
    content = props["Content"]
    assert content["schemaVersion"] == "2.2"
    parameters = content["parameters"]
    assert set(parameters) == {"operation", "items"}
    assert parameters["operation"]["allowedValues"] == list(eval_document.OPERATIONS)
    pattern = parameters["items"]["allowedPattern"]
    assert re.fullmatch(pattern, "Lw==,cQ==,;Lw==,cjI=,cmFiYml0QGE=")
    for injection in ("a'; reboot", 'a">>, os:cmd("x")', "a,b", "a,b,c\nd"):
        assert not re.fullmatch(pattern, injection)
    (step,) = content["mainSteps"]
    (line,) = step["inputs"]["runCommand"]
    assert step["action"] == "aws:runShellScript" and line.startswith("rabbitmqctl eval '")
    assert shlex.split(line)[:2] == ["rabbitmqctl", "eval"] and len(shlex.split(line)) == 3


# --- table, topic, schedule, dashboard, alarm, outputs --------------------------------------------------------


def test_lifecycle_table(app_synth: Synthesized) -> None:
    _, table = only(app_synth.resources(STACK, "AWS::DynamoDB::Table"))
    props = table["Properties"]
    assert props["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert {a["AttributeType"] for a in props["AttributeDefinitions"]} == {"S"}
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


def test_topic_is_encrypted_and_mails_the_context_address(app_synth: Synthesized) -> None:
    _, topic = only(app_synth.resources(STACK, "AWS::SNS::Topic"))
    assert "KmsMasterKeyId" in topic["Properties"]
    _, subscription = only(app_synth.resources(STACK, "AWS::SNS::Subscription"))
    assert subscription["Properties"]["Protocol"] == "email"
    assert subscription["Properties"]["Endpoint"] == "ops@example.com"


def rule(synth: Synthesized, prefix: str) -> dict[str, Any]:
    (found,) = [r for k, r in synth.resources(STACK, "AWS::Events::Rule").items() if k.startswith(prefix)]
    return found


def test_schedule_starts_a_balance_run_when_a_cron_is_set(app_synth: Synthesized) -> None:
    machine_id, _ = only(app_synth.resources(STACK, "AWS::StepFunctions::StateMachine"))
    props = rule(app_synth, "Schedule")["Properties"]
    assert props["State"] == "ENABLED"
    assert props["ScheduleExpression"] == "cron(0 3 * * ? *)"
    (target,) = props["Targets"]
    assert target["Arn"] == {"Ref": machine_id}
    assert json.loads(target["Input"]) == {"action": "balance"}


def test_an_execution_that_ends_without_cleaning_up_goes_to_cleanup(app_synth: Synthesized) -> None:
    """Stopped, timed out, or failed on a path without Cleanup: its locks and policies are undone."""
    machine_id, _ = only(app_synth.resources(STACK, "AWS::StepFunctions::StateMachine"))
    props = rule(app_synth, "EndedRuns")["Properties"]
    assert props["EventPattern"] == {
        "source": ["aws.states"],
        "detail-type": ["Step Functions Execution Status Change"],
        "detail": {"stateMachineArn": [{"Ref": machine_id}], "status": ["ABORTED", "TIMED_OUT", "FAILED"]},
    }
    (target,) = props["Targets"]
    functions = app_synth.resources(STACK, "AWS::Lambda::Function")
    (cleanup_id,) = [
        k for k, f in functions.items() if f["Properties"]["Handler"] == "lambdas.cleanup.handler"
    ]
    assert target["Arn"] == {"Fn::GetAtt": [cleanup_id, "Arn"]}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] == 8
    permissions = app_synth.resources(STACK, "AWS::Lambda::Permission").values()
    assert any(
        p["Properties"]["Principal"] == "events.amazonaws.com"
        and p["Properties"]["FunctionName"] == {"Fn::GetAtt": [cleanup_id, "Arn"]}
        for p in permissions
    )


def test_a_cleanup_that_fails_after_its_retries_is_reported_and_alarms(app_synth: Synthesized) -> None:
    """EventBridge's retries cover delivery only: a Cleanup of an ended run that Lambda accepted and that
    failed goes to the topic (on-failure destination), and its Errors alarm to the same topic."""
    template = app_synth.template(STACK)
    functions = app_synth.resources(STACK, "AWS::Lambda::Function")
    (cleanup_id,) = [
        k for k, f in functions.items() if f["Properties"]["Handler"] == "lambdas.cleanup.handler"
    ]
    topic_id, _ = only(app_synth.resources(STACK, "AWS::SNS::Topic"))
    template.has_resource_properties(
        "AWS::Lambda::EventInvokeConfig",
        {
            "FunctionName": {"Ref": cleanup_id},
            "MaximumRetryAttempts": 2,
            "DestinationConfig": {"OnFailure": {"Destination": {"Ref": topic_id}}},
        },
    )
    template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "Namespace": "AWS/Lambda",
            "MetricName": "Errors",
            "Dimensions": [{"Name": "FunctionName", "Value": {"Ref": cleanup_id}}],
            "Threshold": 1,
            "EvaluationPeriods": 1,
            "AlarmActions": [{"Ref": topic_id}],
        },
    )
    granted = by_sid(statements_of(app_synth, "CleanupRole"))
    assert granted["NotificationTopic"]["Resource"] == {"Ref": topic_id}
    assert granted["NotificationTopicKey"]["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]


def test_the_state_machine_times_out_after_three_days(asl_text: str) -> None:
    """A backstop for an execution that hangs: it then ends TIMED_OUT, which goes to Cleanup."""
    assert json.loads(asl_text)["TimeoutSeconds"] == 3 * 86400


def test_dashboard_and_failed_run_alarm(app_synth: Synthesized) -> None:
    _, dashboard = only(app_synth.resources(STACK, "AWS::CloudWatch::Dashboard"))
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for metric in (
        "MovesDone",
        "MovesFailed",
        "MovesSkipped",
        "SpreadAfter",
        "RunDuration",
        "ExecutionsFailed",
    ):
        assert metric in body
    [alarm] = [
        a
        for a in app_synth.resources(STACK, "AWS::CloudWatch::Alarm").values()
        if "Metrics" in a["Properties"]
    ]
    metrics = json.dumps(alarm["Properties"]["Metrics"])
    assert "ExecutionsFailed" in metrics and "AWS/States" in metrics
    # An aborted run leaves its lock and temporary policies behind: it pages like a failed one.
    assert "ExecutionsAborted" in metrics and "ExecutionsTimedOut" in metrics
    topic_id, _ = only(app_synth.resources(STACK, "AWS::SNS::Topic"))
    assert alarm["Properties"]["AlarmActions"] == [{"Ref": topic_id}]


def test_outputs_are_the_contracts(app_synth: Synthesized) -> None:
    outputs = app_synth.templates[STACK]["Outputs"]
    assert set(outputs) >= set(REQUIRED_OUTPUTS)  # what `queue-balancer --stack` discovers the workflow by
    assert outputs["ClusterName"]["Value"] == "rabbitmq"


# --- checks on every template of the app ---------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["RabbitMqCluster", STACK])
def test_iam_names_its_resources(app_synth: Synthesized, stack: str) -> None:
    assert wildcard_violations(app_synth.templates[stack]) == []


@pytest.mark.parametrize("stack", ["RabbitMqCluster", STACK])
def test_cdk_nag_finds_nothing_unsuppressed(app_synth: Synthesized, stack: str) -> None:
    assert nag_findings(app_synth.messages[stack]) == []
    rows = nag_report(app_synth.outdir, stack)
    assert rows and {r["Compliance"] for r in rows} <= {"Compliant", "Suppressed"}
    assert [r for r in suppression_reasons(app_synth.templates[stack]) if len(r[2]) < 60] == []


@pytest.mark.parametrize("stack", ["RabbitMqCluster", STACK])
def test_cfn_lint_finds_no_errors(app_synth: Synthesized, stack: str) -> None:
    assert cfn_lint_errors(app_synth.templates[stack]) == []


# --- an existing cluster named by the context ------------------------------------------------------------------


def test_existing_cluster_builds_the_balancer_only(existing_synth: Synthesized) -> None:
    assert set(existing_synth.templates) == {STACK}


def test_existing_cluster_values_reach_the_functions(existing_synth: Synthesized) -> None:
    for function in existing_synth.resources(STACK, "AWS::Lambda::Function").values():
        props = function["Properties"]
        variables = props["Environment"]["Variables"]
        assert variables["RABBITMQ_MANAGEMENT_URL"] == EXISTING["managementUrl"]
        assert variables["RABBITMQ_SECRET_ARN"] == EXISTING["secretArn"]
        assert variables["CLUSTER_NAME"] == "prod"
        assert variables["RABBITMQ_CLI_SSM_TAG_KEY"] == EXISTING["ssmTagKey"]
        assert variables["RABBITMQ_CLI_SSM_TAG_VALUE"] == EXISTING["ssmTagValue"]
        assert props["VpcConfig"]["SubnetIds"] == EXISTING["subnetIds"].split(",")


def test_existing_cluster_iam_names_the_given_secret_and_tag(existing_synth: Synthesized) -> None:
    statements = statements_of(existing_synth, "RunBatchRole")
    (secret,) = [s for s in statements if "secretsmanager:GetSecretValue" in s["Action"]]
    assert secret["Resource"] == EXISTING["secretArn"]
    assert by_sid(statements)["EvalDocumentOnClusterNodes"]["Condition"] == {
        "StringEquals": {"ssm:resourceTag/rabbitmq-cluster": "prod-brokers"}
    }
    assert wildcard_violations(existing_synth.templates[STACK]) == []


def test_existing_cluster_gets_its_own_lambda_security_group_and_a_disabled_schedule(
    existing_synth: Synthesized,
) -> None:
    group_id, _ = only(existing_synth.resources(STACK, "AWS::EC2::SecurityGroup"))
    assert existing_synth.templates[STACK]["Outputs"]["LambdaSecurityGroupId"]["Value"] == {
        "Fn::GetAtt": [group_id, "GroupId"]
    }
    assert rule(existing_synth, "Schedule")["Properties"]["State"] == "DISABLED"
    _, machine = only(existing_synth.resources(STACK, "AWS::StepFunctions::StateMachine"))
    assert machine["Properties"]["StateMachineName"] == "queue-balancer-prod"


def test_existing_cluster_is_nag_and_lint_clean(existing_synth: Synthesized) -> None:
    assert nag_findings(existing_synth.messages[STACK]) == []
    assert cfn_lint_errors(existing_synth.templates[STACK]) == []
