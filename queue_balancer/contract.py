"""The AWS contract, in one place: ASL placeholders, the functions' environment and time, the DynamoDB items.

Three parties must agree on it: ``statemachine/balancer.asl.json`` (its ``${...}`` placeholders and the
table keys its DynamoDB tasks write), the stacks that deploy it (``stacks/``), and the code that runs it
(the handlers in ``lambdas/``, the CLI's workflow commands, the local endpoint). Each of them imports
this module instead of keeping its own copy; ``tests/unit/test_contract.py`` checks the three against
the ASL file. The module is pure (standard library only) so the CDK app may import it too.

- **Placeholders**: ``${<Name>FunctionArn}`` names one Lambda function whose handler is
  ``lambdas.<snake_case(Name)>.handler``; ``${LifecycleTableName}`` and ``${NotificationTopicArn}`` are
  the table and the topic. Nothing else is substituted.
- **Environment**: what every function finds in its environment (``FunctionEnvironment``).
- **Time**: a RunBatch slice's budget, its margin to the Lambda timeout and Cleanup's undo time; the
  stack refuses a function timeout shorter than they need (``FUNCTION_SECONDS_NEEDED``).
- **Items**: one table, partition key ``pk`` and sort key ``sk`` (both strings)::

    pk                  sk                        holds
    cluster#<name>      lifecycle                 state, counts, execution ARN, task token, request
    cluster#<name>      lock                      run_id, execution_arn, expires_at, acquired_at
    run#<run_id>        meta                      config, start time, the before report, the summary
    run#<run_id>        plan#<gen>#batch#<i>      the moves of one batch, then their results; ``kind``
                                                  says what they are (``PlanKind``: leader moves or
                                                  quorum member changes)
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from queue_balancer.errors import ConfigurationError


class ContractError(ConfigurationError, ValueError):
    """The ASL, the handler modules or the environment disagree with the contract (docs/aws-contract.md)."""


# ---- ASL placeholders ------------------------------------------------------------------------------

# CloudFormation replaces exactly "${Key}" for each key of DefinitionSubstitutions and leaves any other
# text alone (aws-cloudformation-resource-providers-stepfunctions, DefinitionProcessor.transformDefinition),
# so a placeholder is "${" + identifier + "}"; prose such as "${...}" in a Comment passes through unchanged.
PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
FUNCTION_SUFFIX = "FunctionArn"
FUNCTION_PLACEHOLDER = re.compile(rf"^(\w+){FUNCTION_SUFFIX}$")
TABLE_PLACEHOLDER = "LifecycleTableName"
TOPIC_PLACEHOLDER = "NotificationTopicArn"
RESOURCE_PLACEHOLDERS = frozenset({TABLE_PLACEHOLDER, TOPIC_PLACEHOLDER})
HANDLER_PACKAGE = "lambdas"
HANDLER_ATTRIBUTE = "handler"


def snake_case(name: str) -> str:
    """``StartMove`` -> ``start_move``; ``SSMCommand`` -> ``ssm_command``: the handler's module name."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def asl_placeholders(asl_text: str) -> set[str]:
    """Every ``${Name}`` of the ASL."""
    return set(PLACEHOLDER.findall(asl_text))


def function_names(asl_text: str) -> list[str]:
    """The ``<Name>`` of every ``${<Name>FunctionArn}``, in order of first appearance."""
    found = (FUNCTION_PLACEHOLDER.match(p) for p in PLACEHOLDER.findall(asl_text))
    return list(dict.fromkeys(m.group(1) for m in found if m))


def function_placeholder(name: str) -> str:
    """``StartMove`` -> ``StartMoveFunctionArn`` (the key substituted with the function's ARN)."""
    return f"{name}{FUNCTION_SUFFIX}"


def handler_path(name: str, package: str = HANDLER_PACKAGE) -> str:
    """``StartMove`` -> ``lambdas.start_move.handler``: the function's handler setting."""
    return f"{package}.{snake_case(name)}.{HANDLER_ATTRIBUTE}"


def function_resource_name(prefix: str, name: str) -> str:
    """``(queue-balancer-local, StartMove)`` -> ``queue-balancer-local-start-move``."""
    return f"{prefix}-{snake_case(name).replace('_', '-')}"


def unknown_placeholders(asl_text: str) -> list[str]:
    """Placeholders that are neither a function nor a known resource (nothing would substitute them)."""
    return sorted(
        p for p in asl_placeholders(asl_text) - RESOURCE_PLACEHOLDERS if not FUNCTION_PLACEHOLDER.match(p)
    )


def handler_modules(lambdas_dir: Path) -> set[str]:
    """Modules of ``lambdas_dir`` defining a top-level ``handler`` (helper modules define none)."""
    found = set()
    for path in sorted(lambdas_dir.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            names: list[str] = []
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            if HANDLER_ATTRIBUTE in names:
                found.add(path.stem)
                break
    return found


def discover_functions(asl_text: str, lambdas_dir: Path) -> dict[str, str]:
    """``{Name: "lambdas.<snake>.handler"}`` for each ``${<Name>FunctionArn}``; ContractError on mismatch.

    Every placeholder needs a handler module and every handler module a placeholder, so a renamed state
    or a forgotten module stops the synth (and the local endpoint) instead of failing a run.
    """
    unknown = unknown_placeholders(asl_text)
    if unknown:
        raise ContractError(
            f"the ASL uses placeholders nothing substitutes: {', '.join(unknown)} (known: <Name>"
            f"{FUNCTION_SUFFIX}, {', '.join(sorted(RESOURCE_PLACEHOLDERS))}; see docs/aws-contract.md)"
        )
    names = sorted(function_names(asl_text))
    if not lambdas_dir.is_dir():
        raise ContractError(f"the ASL names functions {names} but {lambdas_dir} does not exist")
    modules = handler_modules(lambdas_dir)
    wanted = {snake_case(name): name for name in names}
    without_module = sorted(f"${{{wanted[m]}{FUNCTION_SUFFIX}}} -> {m}.py" for m in set(wanted) - modules)
    without_placeholder = sorted(f"{m}.py" for m in modules - set(wanted))
    problems = []
    if without_module:
        problems.append(
            f"placeholders without a handler module in {lambdas_dir}: {', '.join(without_module)}"
        )
    if without_placeholder:
        problems.append(
            f"handler modules no ${{<Name>{FUNCTION_SUFFIX}}} of the ASL names: {', '.join(without_placeholder)}"
        )
    if problems:
        raise ContractError("; ".join(problems) + " (see docs/aws-contract.md)")
    return {name: handler_path(name, lambdas_dir.name) for name in names}


def substitute(asl_text: str, values: Mapping[str, str], *, strict: bool = True) -> str:
    """Replace ``${Key}`` placeholders as CloudFormation does.

    ``strict``: an unknown placeholder is a ContractError (what deploying would fail on); otherwise it
    is left as written (to look at a partial substitution).
    """

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        if key in values:
            return values[key]
        if strict:
            raise ContractError(f"the ASL has a placeholder ${{{key}}} that is not substituted")
        return match.group(0)

    return PLACEHOLDER.sub(value, asl_text)


# ---- what each function may reach (one IAM role per function, stacks/balancer_iam.py) ------------------

TABLE_ACCESS = "table"
"""The lifecycle table's items."""
CLUSTER_ACCESS = "cluster"
"""The cluster's admin secret (the management API and AMQP)."""
EVAL_ACCESS = "eval"
"""``ssm:SendCommand`` of the balancer's own eval document on the cluster's nodes (quorum leader transfers,
member changes, maintenance mode on 3.x): a root-level reach into every broker, so only the functions that
move queues or plan them (a plan must see drained nodes) get it."""
NOTIFY_ACCESS = "notify"
"""``sns:Publish`` on the notification topic (and its key): Cleanup's on-failure destination, so a Cleanup that
EventBridge invoked (an execution that ended without cleaning up) and that still failed after Lambda's own
retries is reported instead of dropped."""
FUNCTION_ACCESS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "ValidateInput": frozenset(),
        "Preflight": frozenset({TABLE_ACCESS, CLUSTER_ACCESS}),
        "LoadQueues": frozenset({TABLE_ACCESS, CLUSTER_ACCESS, EVAL_ACCESS}),
        "ControlCheck": frozenset({TABLE_ACCESS, CLUSTER_ACCESS}),
        "RunBatch": frozenset({TABLE_ACCESS, CLUSTER_ACCESS, EVAL_ACCESS}),
        "ParkRun": frozenset({TABLE_ACCESS, CLUSTER_ACCESS}),
        "VerifyRound": frozenset({TABLE_ACCESS, CLUSTER_ACCESS, EVAL_ACCESS}),
        "ReportRun": frozenset({TABLE_ACCESS, CLUSTER_ACCESS}),
        "FinishRun": frozenset({TABLE_ACCESS, CLUSTER_ACCESS}),
        "Cleanup": frozenset({TABLE_ACCESS, CLUSTER_ACCESS, NOTIFY_ACCESS}),
    }
)
"""Function name (``${<Name>FunctionArn}``) -> what its role grants beyond logs and the VPC."""


def function_access(name: str) -> frozenset[str]:
    """What function ``name`` may reach; ``ContractError`` for a function the contract does not know."""
    try:
        return FUNCTION_ACCESS[name]
    except KeyError:
        raise ContractError(
            f"function {name} has no entry in queue_balancer.contract.FUNCTION_ACCESS: say what it may reach"
        ) from None


# ---- the functions' time ------------------------------------------------------------------------------

BUDGET_SECONDS = 120.0
"""The longest RunBatch slice; the handler also keeps a margin to the Lambda timeout."""
TIMEOUT_MARGIN_SECONDS = 30.0
"""Time left to the Lambda timeout when a slice ends at the latest (rollbacks, the final write)."""
UNDO_SECONDS = 120.0
"""What Cleanup keeps of its own time for undoing the run once it stopped waiting for a slice."""
FUNCTION_SECONDS_NEEDED = BUDGET_SECONDS + TIMEOUT_MARGIN_SECONDS + UNDO_SECONDS
"""The shortest Lambda timeout with which Cleanup can wait for a whole slice (its budget, then its
rollback in the margin to its own timeout) and still keep ``UNDO_SECONDS``: the stack refuses less."""


STATUS_CHANGE = "Step Functions Execution Status Change"
"""The ``detail-type`` of the EventBridge events the stack routes to the Cleanup function."""
ENDED_WITHOUT_CLEANUP = ("ABORTED", "TIMED_OUT", "FAILED")
"""The execution statuses routed to Cleanup (a FAILED run has normally cleaned up before it failed;
Cleanup then finds nothing of it to undo)."""

NODE_TAG_KEY = "queue-balancer:node"
"""An instance may name the RabbitMQ node it runs with this tag (the local emulation does; on AWS a node
is known by its instance's private DNS name, ``rabbit@<local-hostname>``)."""


# ---- the functions' environment ----------------------------------------------------------------------

SERVICE_NAME = "queue-balancer"
METRICS_NAMESPACE = "QueueBalancer"
ENVIRONMENT_VARIABLES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "cluster_name": "CLUSTER_NAME",
        "management_url": "RABBITMQ_MANAGEMENT_URL",
        "secret_arn": "RABBITMQ_SECRET_ARN",
        "ssm_tag_key": "RABBITMQ_CLI_SSM_TAG_KEY",
        "ssm_tag_value": "RABBITMQ_CLI_SSM_TAG_VALUE",
        "lifecycle_table": "LIFECYCLE_TABLE",
        "notification_topic_arn": "NOTIFICATION_TOPIC_ARN",
    }
)
"""The required variables, by field of ``FunctionEnvironment``."""
AMQP_PORT_VARIABLE = "RABBITMQ_AMQP_PORT"
POWERTOOLS_ENVIRONMENT: Final[Mapping[str, str]] = MappingProxyType(
    {"POWERTOOLS_SERVICE_NAME": SERVICE_NAME, "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE}
)


@dataclass(frozen=True)
class FunctionEnvironment:
    """What every Lambda function of the workflow finds in its environment, parsed once per container."""

    cluster_name: str
    management_url: str
    secret_arn: str
    ssm_tag_key: str
    ssm_tag_value: str
    lifecycle_table: str
    notification_topic_arn: str
    amqp_port: int | None = None
    """Where AMQP answers on the management URL's host (exact message counts); optional: by default
    the handlers ask the management API for its node's AMQP listener."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FunctionEnvironment:
        """Every variable of the contract, or one error naming all that are missing."""
        missing = [var for var in ENVIRONMENT_VARIABLES.values() if not env.get(var)]
        if missing:
            raise ContractError(f"environment variable(s) not set: {', '.join(missing)}")
        port = env.get(AMQP_PORT_VARIABLE) or None
        if port is not None and not port.isdigit():
            raise ContractError(f"{AMQP_PORT_VARIABLE} must be a port number, not {port!r}")
        amqp_port = int(port) if port else None
        return cls(**{field: env[var] for field, var in ENVIRONMENT_VARIABLES.items()}, amqp_port=amqp_port)

    def to_env(self) -> dict[str, str]:
        """The variables to set (the stacks pass CloudFormation tokens as the values)."""
        env = {var: str(getattr(self, field)) for field, var in ENVIRONMENT_VARIABLES.items()}
        if self.amqp_port is not None:
            env[AMQP_PORT_VARIABLE] = str(self.amqp_port)
        return env | dict(POWERTOOLS_ENVIRONMENT)


# ---- the DynamoDB item layout ------------------------------------------------------------------------

PARTITION_KEY = "pk"
SORT_KEY = "sk"
LIFECYCLE_SK = "lifecycle"
LOCK_SK = "lock"
RUN_META_SK = "meta"
EXPIRES_AT = "expires_at"
"""The table's time-to-live attribute (epoch seconds): run items after 90 days, the lock at its lease."""
LOCK_ATTRIBUTES = ("run_id", "execution_arn", EXPIRES_AT, "acquired_at")
"""What the ASL's AcquireLock writes into the lock item."""
JSON_PREFIX = "json:"
"""Meta fields that are not a plain string or integer are stored as ``json:<text>``."""
PLAN_KIND = "kind"
"""The attribute of a batch item (and the meta field) that says what the plan moves."""


class PlanKind(StrEnum):
    LEADERS = "leaders"  # leader moves (``Move``, ``MoveProgress``); an item without ``kind`` holds these
    MEMBERS = "members"  # quorum member changes (``MemberMove``, ``MemberProgress``): ``members: true``


def cluster_pk(cluster: str) -> str:
    """Partition of a cluster's lifecycle item and lock."""
    return f"cluster#{cluster}"


def run_pk(run_id: str) -> str:
    """Partition of one run's plan batches, results and report."""
    return f"run#{run_id}"


def batch_sk(generation: int, index: int) -> str:
    """Sort key of one batch of one plan; a re-plan (next round or ``load``) is a new generation."""
    return f"plan#{generation:04d}#batch#{index:05d}"


def is_batch_sk(sort_key: str) -> bool:
    return sort_key.startswith("plan#")


def item_key(pk: str, sk: str) -> dict[str, str]:
    return {PARTITION_KEY: pk, SORT_KEY: sk}


def table_definition(name: str) -> dict[str, Any]:
    """``CreateTable``'s arguments for a lifecycle table (the local endpoint's, the tests' on moto)."""
    keys = ((PARTITION_KEY, "HASH"), (SORT_KEY, "RANGE"))
    return {
        "TableName": name,
        "KeySchema": [{"AttributeName": key, "KeyType": kind} for key, kind in keys],
        "AttributeDefinitions": [{"AttributeName": key, "AttributeType": "S"} for key, _ in keys],
        "BillingMode": "PAY_PER_REQUEST",
    }


def lifecycle_key(cluster: str) -> dict[str, str]:
    return item_key(cluster_pk(cluster), LIFECYCLE_SK)


def lock_key(cluster: str) -> dict[str, str]:
    return item_key(cluster_pk(cluster), LOCK_SK)


def run_meta_key(run_id: str) -> dict[str, str]:
    return item_key(run_pk(run_id), RUN_META_SK)


def batch_key(run_id: str, generation: int, index: int) -> dict[str, str]:
    return item_key(run_pk(run_id), batch_sk(generation, index))


def encode_meta(value: Any) -> Any:
    """A meta field as stored: plain strings and integers as they are, anything else as JSON text."""
    if isinstance(value, str | int) and not isinstance(value, bool):
        return value
    return JSON_PREFIX + json.dumps(value, ensure_ascii=False)


def decode_meta(value: Any) -> Any:
    """A meta field as read back (DynamoDB numbers come as ``Decimal``)."""
    if isinstance(value, str) and value.startswith(JSON_PREFIX):
        return json.loads(value[len(JSON_PREFIX) :])
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def decode_meta_item(item: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: decode_meta(v) for k, v in (item or {}).items()}
