"""The SSM document's parameters: every operation the core builds maps onto them, nothing else does."""

from __future__ import annotations

import re

import pytest

from queue_balancer import eval_document
from queue_balancer.errors import LeaderTransferError
from queue_balancer.leader_transfer import expression

ITEMS = [("/", "orders 'eu'", "rabbit@ip-10-0-1-5"), ("väst", 'q">>, os:cmd("x")', "")]


@pytest.mark.parametrize("operation", list(eval_document.OPERATIONS))
def test_each_operation_becomes_its_name_and_base64_items_the_document_accepts(operation: str) -> None:
    built = expression(eval_document.OPERATIONS[operation], ITEMS)
    given = eval_document.parameters(built)
    assert given["operation"] == [operation]
    (items,) = given["items"]
    assert re.fullmatch(eval_document.ITEMS_PATTERN, items)
    # The document evaluates the same fun over the same items the core would have sent.
    assert eval_document.OPERATIONS[operation].strip().splitlines()[0] in eval_document.eval_expression(
        operation, items
    )
    assert items.count(";") == len(ITEMS) - 1


@pytest.mark.parametrize(
    "tampered",
    [
        'os:cmd("reboot").',
        expression(eval_document.OPERATIONS["add_member"], ITEMS).replace("]])]).", '], os:cmd("x")])]).'),
        expression(eval_document.OPERATIONS["add_member"], ITEMS).replace('{<<"', '{os:cmd("x"), <<"', 1),
        expression("fun(X) -> os:cmd(X) end", ITEMS),
    ],
)
def test_anything_else_is_refused_before_it_is_sent(tampered: str) -> None:
    with pytest.raises(LeaderTransferError, match="refusing another expression"):
        eval_document.parameters(tampered)


def test_the_document_line_is_one_shell_word_after_rabbitmqctl_eval() -> None:
    (step,) = eval_document.content()["mainSteps"]
    (line,) = step["inputs"]["runCommand"]
    assert line.startswith("rabbitmqctl eval '") and line.endswith("'") and line.count("'") == 2
