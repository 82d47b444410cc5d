"""Import rules of the layout (DESIGN.md): imports point one way, read from the source with ``ast``.

- the core ``queue_balancer`` (all of it but the edges ``cli/`` and ``local/``) imports no AWS SDK,
  no Lambda runtime, no CDK, and nothing of the CLI, ``local/``, ``lambdas/`` or ``stacks/``;
- the handlers in ``lambdas/`` never import the CLI, ``local/``, ``stacks/`` or the CDK;
- ``stacks/`` and ``app.py`` import nothing of ``lambdas/``, and of ``queue_balancer`` only pure modules
  (a contract module that, with everything it imports of ours, needs the standard library alone).

Every import counts, also one inside a function or under ``TYPE_CHECKING``. Lint (ruff) and types
(mypy --strict) are checked by ``make lint typecheck``, which ``make test`` runs before pytest.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from queue_balancer.contract import handler_modules

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "queue_balancer"
# The edges of queue_balancer: the terminal with the AWS client code (cli/), and the local default.
CORE_EDGES = ("cli", "local")

AWS_AND_RUNTIME = ("boto3", "botocore", "mypy_boto3_*", "types_boto3*", "aws_lambda_powertools", "moto")
CDK = ("aws_cdk", "constructs", "cdk_nag", "jsii")
CLI = ("queue_balancer.cli",)
LOCAL = ("queue_balancer.local",)


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in ``path``; ``from a import b`` yields ``a`` and ``a.b``."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base:
                yield node.lineno, base
            prefix = f"{base}." if base else ""
            yield from ((node.lineno, prefix + alias.name) for alias in node.names if alias.name != "*")


def _matches(module: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return module.split(".")[0].startswith(pattern[:-1])
    return module == pattern or module.startswith(pattern + ".")


def _violations(paths: Iterable[Path], forbidden: Iterable[str]) -> list[str]:
    patterns = tuple(forbidden)
    return [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in paths
        for line, module in _imported(path)
        if any(_matches(module, pattern) for pattern in patterns)
    ]


def _sources(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.py") if "__pycache__" not in path.parts)


def _core_sources() -> list[Path]:
    return [path for path in _sources(CORE) if path.relative_to(CORE).parts[0] not in CORE_EDGES]


def test_the_rules_see_every_room() -> None:
    """The rules below read real files: a room that moved away would make them pass on nothing."""
    assert len(_core_sources()) >= 5
    assert any(path.name == "model.py" for path in _core_sources())
    assert len(_sources(ROOT / "lambdas")) >= 5
    assert len(_sources(ROOT / "stacks")) >= 2


def test_the_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    source = package / "mod.py"
    source.write_text(
        "import boto3.session\nfrom . import sibling\nfrom .. import up\n"
        "def f() -> None:\n    from queue_balancer.local.cluster import LocalCluster\n"
    )
    found = {module for _, module in _imported(source, root=tmp_path)}
    assert {"boto3.session", "pkg.sibling", "up", "queue_balancer.local.cluster"} <= found
    assert _matches("mypy_boto3_dynamodb.client", "mypy_boto3_*")
    assert not _matches("queue_balancer.clients", "queue_balancer.cli")


def test_the_core_imports_no_aws_no_cli_no_local_no_handlers() -> None:
    forbidden = (*AWS_AND_RUNTIME, *CDK, *CLI, *LOCAL, "lambdas", "stacks")
    assert _violations(_core_sources(), forbidden) == []


def test_handlers_import_no_cli_no_local_no_stacks() -> None:
    forbidden = (*CLI, *LOCAL, *CDK, "stacks", "app", "bench", "tests")
    assert _violations(_sources(ROOT / "lambdas"), forbidden) == []


def test_no_handler_imports_another_handler() -> None:
    """A rule two handlers share lives in the core or in a helper module of ``lambdas/``, not in a handler."""
    handlers = handler_modules(ROOT / "lambdas")
    assert len(handlers) >= 5
    forbidden = tuple(f"lambdas.{name}" for name in handlers)
    assert _violations(_sources(ROOT / "lambdas"), forbidden) == []


@functools.cache
def _is_pure(module: str) -> bool:
    """A module of ours that needs the standard library alone, with everything of ours it imports."""
    path = ROOT / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    if not path.is_file():
        # ``from queue_balancer.x import name``: the name is no module of its own.
        return True
    for _, imported in _imported(path):
        top = imported.split(".")[0]
        if top == "queue_balancer":
            if imported != module and not _is_pure(imported):
                return False
        elif top not in sys.stdlib_module_names:
            return False
    return True


def test_stacks_import_no_handlers_and_only_pure_contracts_of_the_core() -> None:
    sources = [*_sources(ROOT / "stacks"), ROOT / "app.py"]
    assert _violations(sources, ("lambdas", *CLI, *LOCAL, "bench", "tests")) == []
    impure = [
        f"{path.relative_to(ROOT)}:{line} imports {module}, which needs more than the standard library"
        for path in sources
        for line, module in _imported(path)
        if module.split(".")[0] == "queue_balancer" and not _is_pure(module)
    ]
    assert impure == []


def test_purity_is_judged_by_what_a_module_imports() -> None:
    assert _is_pure("queue_balancer.model") and _is_pure("queue_balancer.errors")
    assert not _is_pure("queue_balancer.management")  # requests: a RabbitMQ adapter, not a contract


def _store_calls(path: Path, methods: frozenset[str]) -> list[str]:
    """Calls of a ``LifecycleStore`` method (``x.save(...)``, ``store().meta(...)``) in ``path``."""
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} calls .{node.func.attr}()"
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in methods
    ]


def test_handlers_leave_the_store_to_the_core() -> None:
    """A handler parses its event and makes one core call: what it reads and writes in the lifecycle
    store (the rules of the run) is the core's: ``queue_balancer.workflow`` and ``batch_run``."""
    from queue_balancer.workflow.ports import LifecycleStore

    ours = [cls for cls in LifecycleStore.__mro__ if cls.__module__.startswith("queue_balancer.")]
    methods = frozenset(name for cls in ours for name in vars(cls) if not name.startswith("_"))
    assert {"save", "lifecycle", "put_meta"} <= methods
    handlers = handler_modules(ROOT / "lambdas")
    calls = [
        call for name in sorted(handlers) for call in _store_calls(ROOT / "lambdas" / f"{name}.py", methods)
    ]
    assert calls == []
