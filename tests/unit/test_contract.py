"""The AWS contract: the ASL file, the handlers, the local endpoint and the stacks agree on it.

The stacks and the local endpoint take function names, handler paths, the environment and the table's
keys from ``queue_balancer.contract``; these tests hold the contract itself against the real ASL file
(``tests/infra`` checks the synthesized template against the same module).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from queue_balancer import contract
from queue_balancer.contract import (
    AMQP_PORT_VARIABLE,
    ENVIRONMENT_VARIABLES,
    LIFECYCLE_SK,
    LOCK_ATTRIBUTES,
    LOCK_SK,
    PARTITION_KEY,
    SORT_KEY,
    TABLE_PLACEHOLDER,
    ContractError,
    FunctionEnvironment,
    decode_meta,
    discover_functions,
    encode_meta,
    function_names,
    function_resource_name,
    handler_path,
    lifecycle_key,
    snake_case,
    unknown_placeholders,
)
from queue_balancer.lifecycle import Lifecycle
from queue_balancer.local import provisioning
from queue_balancer.workflow.run_state import RunState
from tests.source_files import write_asl, write_module

REPO = Path(__file__).resolve().parents[2]
ASL_PATH = REPO / "statemachine" / "balancer.asl.json"


def asl_text() -> str:
    return ASL_PATH.read_text()


def dynamodb_tasks(states: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state in states.items():
        if str(state.get("Resource", "")).startswith("arn:aws:states:::dynamodb:"):
            yield name, state
        for branch in state.get("Branches", []):
            yield from dynamodb_tasks(branch["States"])
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if processor:
            yield from dynamodb_tasks(processor["States"])


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("StartMove", "start_move"),
        ("Preflight", "preflight"),
        ("SSMCommand", "ssm_command"),
        ("LoadQueuesV2", "load_queues_v2"),
    ],
)
def test_one_placeholder_to_handler_rule(name: str, module: str) -> None:
    """The rule that once disagreed between the stack and the local endpoint (``SSMCommand``)."""
    assert snake_case(name) == module
    assert handler_path(name) == f"lambdas.{module}.handler"
    assert function_resource_name("qb", name) == f"qb-{module.replace('_', '-')}"


def test_functions_come_from_the_asl_placeholders(tmp_path: Path) -> None:
    lambdas = tmp_path / "lambdas"
    for module in ("start_move", "check_move", "__init__"):
        write_module(
            lambdas, module, "" if module == "__init__" else "def handler(event, context):\n    return {}\n"
        )
    write_module(lambdas, "environment", "SETTINGS = 1\n")  # a helper module: no handler, no placeholder
    asl = write_asl(tmp_path, "StartMoveFunctionArn", "CheckMoveFunctionArn", "LifecycleTableName")
    assert discover_functions(asl, lambdas) == {
        "CheckMove": "lambdas.check_move.handler",
        "StartMove": "lambdas.start_move.handler",
    }


def test_a_placeholder_without_a_module_fails_the_synth(tmp_path: Path) -> None:
    lambdas = tmp_path / "lambdas"
    write_module(lambdas, "start_move")
    asl = write_asl(tmp_path, "StartMoveFunctionArn", "FinishMoveFunctionArn")
    with pytest.raises(ContractError, match=r"FinishMoveFunctionArn\} -> finish_move\.py"):
        discover_functions(asl, lambdas)


def test_a_handler_module_without_a_placeholder_fails_the_synth(tmp_path: Path) -> None:
    lambdas = tmp_path / "lambdas"
    write_module(lambdas, "start_move")
    write_module(lambdas, "forgotten")
    with pytest.raises(ContractError, match=r"handler modules no .* names: forgotten\.py"):
        discover_functions(write_asl(tmp_path, "StartMoveFunctionArn"), lambdas)


def test_an_unknown_placeholder_fails_the_synth(tmp_path: Path) -> None:
    lambdas = tmp_path / "lambdas"
    write_module(lambdas, "start_move")
    with pytest.raises(ContractError, match="BucketName"):
        discover_functions(write_asl(tmp_path, "StartMoveFunctionArn", "BucketName"), lambdas)


def test_every_function_of_the_asl_has_an_importable_handler_and_every_handler_a_function() -> None:
    functions = discover_functions(asl_text(), REPO / "lambdas")
    assert sorted(functions) == sorted(function_names(asl_text()))
    for name, path in functions.items():
        module, attribute = path.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), attribute)), name
    assert unknown_placeholders(asl_text()) == []


def test_every_function_of_the_asl_says_what_its_role_may_reach() -> None:
    assert sorted(contract.FUNCTION_ACCESS) == sorted(function_names(asl_text()))
    with pytest.raises(contract.ContractError, match="function Shuffle has no entry"):
        contract.function_access("Shuffle")
    senders = [n for n, reach in contract.FUNCTION_ACCESS.items() if contract.EVAL_ACCESS in reach]
    # RunBatch transfers quorum leaders and changes members; the two that plan read maintenance mode (3.x).
    assert senders == ["LoadQueues", "RunBatch", "VerifyRound"]


def test_the_local_endpoint_binds_the_contracts_handlers() -> None:
    for name in function_names(asl_text()):
        module = importlib.import_module(handler_path(name).rsplit(".", 1)[0])
        assert provisioning.load_handler(name) is module.handler


def test_an_unknown_placeholder_is_refused() -> None:
    with pytest.raises(ContractError, match="BucketName"):
        contract.substitute('{"a": "${BucketName}"}', {})
    assert (
        contract.substitute('{"a": "${A}", "b": "${B}"}', {"A": "x"}, strict=False)
        == '{"a": "x", "b": "${B}"}'
    )


def test_the_environment_round_trips_and_names_every_missing_variable() -> None:
    env = FunctionEnvironment(
        cluster_name="c",
        management_url="http://n:15672",
        secret_arn="arn:secret",
        ssm_tag_key="k",
        ssm_tag_value="v",
        lifecycle_table="t",
        notification_topic_arn="arn:topic",
        amqp_port=5673,
    )
    assert FunctionEnvironment.from_env(env.to_env()) == env
    assert AMQP_PORT_VARIABLE not in replace(env, amqp_port=None).to_env()
    assert FunctionEnvironment.from_env(replace(env, amqp_port=None).to_env()).amqp_port is None
    with pytest.raises(ContractError) as raised:
        FunctionEnvironment.from_env({"CLUSTER_NAME": "c"})
    for variable in set(ENVIRONMENT_VARIABLES.values()) - {"CLUSTER_NAME"}:
        assert variable in str(raised.value)
    with pytest.raises(ContractError, match="port number"):
        FunctionEnvironment.from_env(env.to_env() | {AMQP_PORT_VARIABLE: "amqp"})


def test_the_asl_dynamodb_tasks_use_the_contracts_table_and_keys() -> None:
    definition = json.loads(asl_text())
    tasks = dict(dynamodb_tasks(definition["States"]))
    assert tasks, "the ASL writes the lock and the lifecycle directly"
    for name, task in tasks.items():
        parameters = task["Parameters"]
        assert parameters["TableName"] == f"${{{TABLE_PLACEHOLDER}}}", name
        key = parameters.get("Key") or {k: parameters["Item"][k] for k in (PARTITION_KEY, SORT_KEY)}
        assert set(key) == {PARTITION_KEY, SORT_KEY}, name
        assert key[PARTITION_KEY] == {"S.$": "$.run.pk"}, name
        assert key[SORT_KEY]["S"] in (LOCK_SK, LIFECYCLE_SK), name
    lock_item = tasks["AcquireLock"]["Parameters"]["Item"]
    assert set(lock_item) == {PARTITION_KEY, SORT_KEY, *LOCK_ATTRIBUTES}


def test_the_run_state_carries_the_partition_the_asl_writes_to() -> None:
    """``$.run.pk`` (what the ASL's tasks address) is the lifecycle item's partition."""
    run = RunState(run_id="r1", cluster="prod", started_at=0.0)
    item = Lifecycle(cluster="prod").to_item()
    assert run.to_dict()[PARTITION_KEY] == item[PARTITION_KEY] == lifecycle_key("prod")[PARTITION_KEY]
    assert item[SORT_KEY] == LIFECYCLE_SK


@pytest.mark.parametrize("value", ["text", 7, 2.5, True, {"a": [1, 2]}, None])
def test_meta_values_round_trip(value: object) -> None:
    assert decode_meta(encode_meta(value)) == value
