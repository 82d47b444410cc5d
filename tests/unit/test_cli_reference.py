"""The README's CLI reference agrees with the parser: generated from it, current, and every option that a
command's `--help` shows is documented under that command; the exit codes are documented once, all of them."""

from __future__ import annotations

import re
from pathlib import Path

from queue_balancer.cli import exit_codes
from queue_balancer.cli.main import full_parser
from queue_balancer.cli.reference import BEGIN, END, commands, main
from queue_balancer.lifecycle import RunInput

README = Path(__file__).resolve().parents[2] / "README.md"


def _sections() -> dict[str, str]:
    """README reference text by command words ("" for the global options)."""
    text = README.read_text().split(BEGIN, 1)[1].split(END, 1)[0]
    parts = re.split(r"^#### (.*)$", text, flags=re.MULTILINE)
    found = {}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        words = re.fullmatch(r"`queue-balancer (.*?)( COMMAND)?`", heading)
        found[words.group(1) if words else ""] = body
    return found


def test_the_readme_reference_is_current() -> None:
    assert main(["--check", str(README)]) == 0, "python -m queue_balancer.cli.reference --write README.md"


def test_every_option_of_every_help_is_documented_under_its_command() -> None:
    sections = _sections()
    parser = full_parser()
    for words, _help, sub in commands(parser):
        name = " ".join(words)
        assert name in sections, f"`queue-balancer {name}` is not in the README's CLI reference"
        shown = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", sub.format_help())) - {"--help"}
        documented = set(re.findall(r"`(--[a-z][a-z-]+)`", sections[name]))
        assert shown <= documented, f"{name}: {sorted(shown - documented)} missing in the README"
    assert set(words for words, _, _ in commands(parser)) >= {("report",), ("run",), ("local", "seed")}


def test_the_exit_codes_are_documented_once_all_of_them() -> None:
    readme = README.read_text()
    codes = {v for k, v in vars(exit_codes).items() if k.startswith("EXIT_")}
    table = readme.split("- **Exit codes**", 1)[1].split("- **Output**", 1)[0]
    assert codes == {int(c) for c in re.findall(r"^\s*\| (\d+) \|", table, flags=re.MULTILINE)}
    assert readme.count("- **Exit codes**") == 1


def test_every_default_a_help_names_is_the_default_the_command_uses() -> None:
    """A help text that says "(default 8)" while the parser (or, for `run`/`load`, the run input that
    fills what the command line leaves out) uses another value would pass the checks above: the README
    is generated from that same wrong text."""
    members_only = RunInput.parse({"action": "balance", "members": True}).to_dict()  # --group-size
    run_defaults = {**members_only, **RunInput.parse({"action": "balance"}).to_dict()}
    checked = 0
    for words, _help, sub in commands(full_parser()):
        for action in sub._actions:
            said = re.search(r"\(default (\d+(?:\.\d+)?)\)", action.help or "")
            if not said:
                continue
            used = action.default
            if used is None:  # run/load leave it to the run input, as the workflow does
                used = run_defaults[action.dest]
            assert float(said.group(1)) == float(used), (
                f"queue-balancer {' '.join(words)} {action.option_strings[0]}: the help says "
                f"default {said.group(1)}, the command uses {used}"
            )
            checked += 1
    assert checked >= 10
