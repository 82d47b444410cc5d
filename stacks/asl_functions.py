"""The ASL's side of the contract with the stack: which placeholders name which handler modules.

``statemachine/balancer.asl.json`` names every Lambda it invokes as ``${<Name>FunctionArn}``; each becomes one
function with handler ``lambdas.<snake_name>.handler`` (docs/aws-contract.md). Pure: reads text and files.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from pathlib import Path

# CloudFormation replaces exactly "${Key}" for each key of DefinitionSubstitutions and leaves any other
# text alone (aws-cloudformation-resource-providers-stepfunctions, DefinitionProcessor.transformDefinition),
# so a placeholder is "${" + identifier + "}"; prose such as "${...}" in a Comment passes through unchanged.
PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
FUNCTION_PLACEHOLDER = re.compile(r"^(\w+)FunctionArn$")
TABLE_PLACEHOLDER = "LifecycleTableName"
TOPIC_PLACEHOLDER = "NotificationTopicArn"


class ContractError(ValueError):
    """The ASL and the handler modules disagree (docs/aws-contract.md); the synth stops with this."""


def snake_case(name: str) -> str:
    """``StartMove`` -> ``start_move``; ``SSMCommand`` -> ``ssm_command``."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def asl_placeholders(asl_text: str) -> set[str]:
    """Every ``${Name}`` of the ASL."""
    return set(PLACEHOLDER.findall(asl_text))


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
            if "handler" in names:
                found.add(path.stem)
                break
    return found


def discover_functions(asl_text: str, lambdas_dir: Path) -> dict[str, str]:
    """``{Name: "lambdas.<snake>.handler"}`` for each ``${<Name>FunctionArn}``; ContractError on mismatch."""
    placeholders = asl_placeholders(asl_text)
    names = sorted(m.group(1) for p in placeholders if (m := FUNCTION_PLACEHOLDER.match(p)))
    unknown = sorted(
        p for p in placeholders - {TABLE_PLACEHOLDER, TOPIC_PLACEHOLDER} if not FUNCTION_PLACEHOLDER.match(p)
    )
    if unknown:
        raise ContractError(
            f"the ASL uses placeholders the stack does not substitute: {', '.join(unknown)} "
            f"(known: <Name>FunctionArn, {TABLE_PLACEHOLDER}, {TOPIC_PLACEHOLDER}; see docs/aws-contract.md)"
        )
    if not lambdas_dir.is_dir():
        raise ContractError(f"the ASL names functions {names} but {lambdas_dir} does not exist")
    modules = handler_modules(lambdas_dir)
    wanted = {snake_case(name): name for name in names}
    without_module = sorted(f"${{{wanted[m]}FunctionArn}} -> {m}.py" for m in set(wanted) - modules)
    without_placeholder = sorted(f"{m}.py" for m in modules - set(wanted))
    problems = []
    if without_module:
        problems.append(
            f"placeholders without a handler module in {lambdas_dir}: {', '.join(without_module)}"
        )
    if without_placeholder:
        problems.append(
            f"handler modules no ${{<Name>FunctionArn}} of the ASL names: {', '.join(without_placeholder)}"
        )
    if problems:
        raise ContractError("; ".join(problems) + " (see docs/aws-contract.md)")
    return {name: f"{lambdas_dir.name}.{snake_case(name)}.handler" for name in names}


def substitute(asl_text: str, substitutions: Mapping[str, str]) -> str:
    """The ASL as CloudFormation will deliver it (used by the tests on the synthesized substitutions)."""
    return PLACEHOLDER.sub(lambda m: substitutions.get(m.group(1), m.group(0)), asl_text)
