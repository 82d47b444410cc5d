"""The one code asset every balancer Lambda shares: ``lambdas/`` + ``queue_balancer/`` + runtime wheels.

Bundled locally with ``pip --platform`` (no Docker); the asset hash follows the sources, the requirements and
the target platform, so an unchanged tree never re-uploads.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, ILocalBundling
from aws_cdk import aws_lambda as lambda_

from queue_balancer.contract import ContractError
from stacks import REPO_ROOT

PYPROJECT = REPO_ROOT / "pyproject.toml"

RUNTIME = lambda_.Runtime.PYTHON_3_12
ARCHITECTURE = lambda_.Architecture.ARM_64
PIP_PLATFORM = "manylinux2014_aarch64"
# The Lambda runtime ships boto3 and botocore as a matching pair: a bundled botocore would shadow the
# runtime's and break that pairing, so it is left out of the asset.
PROVIDED_BY_RUNTIME = ("boto3", "botocore", "s3transfer")


def runtime_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """The project's runtime dependencies plus its ``aws`` extra, less what the Lambda runtime provides."""
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = [*project.get("dependencies", []), *project.get("optional-dependencies", {}).get("aws", [])]

    def name(requirement: str) -> str:
        return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    return [r for r in wanted if name(r) not in PROVIDED_BY_RUNTIME]


def _source_files(directories: Iterable[Path]) -> list[tuple[str, Path]]:
    files = []
    for directory in directories:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.append((f"{directory.name}/{path.relative_to(directory).as_posix()}", path))
    return files


def asset_hash(directories: Sequence[Path], requirements: Sequence[str]) -> str:
    """Changes whenever a source file, a requirement or the target platform does."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(requirements), PIP_PLATFORM, RUNTIME.name]).encode())
    for relative, path in _source_files(directories):
        digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@jsii.implements(ILocalBundling)
class PipLocalBundling:
    """Bundles without Docker: copies the packages and ``pip install``s the Lambda platform's wheels."""

    def __init__(self, directories: Sequence[Path], requirements: Sequence[str]) -> None:
        self.directories = list(directories)
        self.requirements = list(requirements)

    def try_bundle(self, output_dir: str, *_args: Any, **_kwargs: Any) -> bool:
        out = Path(output_dir)
        for directory in self.directories:
            shutil.copytree(
                directory,
                out / directory.name,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                dirs_exist_ok=True,
            )
        if self.requirements:
            command = [
                sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                "--no-compile", "--target", output_dir, "--implementation", "cp", "--python-version",
                RUNTIME.name.removeprefix("python"), "--platform", PIP_PLATFORM, "--only-binary=:all:",
                *self.requirements,
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(
                    f"bundling the Lambda dependencies failed ({' '.join(command)}):\n{done.stderr[-3000:]}"
                )
            for name in PROVIDED_BY_RUNTIME:
                for leftover in out.glob(f"{name}*"):
                    if leftover.is_dir():
                        shutil.rmtree(leftover)
                    else:
                        leftover.unlink()
        return True


def lambda_code(lambdas_dir: Path, core_dir: Path, requirements: Sequence[str]) -> lambda_.Code:
    """One asset for every function: ``lambdas/`` + ``queue_balancer/`` + the runtime dependencies."""
    directories = [lambdas_dir, core_dir]
    for directory in directories:
        if not directory.is_dir():
            raise ContractError(f"the Lambda asset needs {directory}, which does not exist")
    return lambda_.Code.from_asset(
        str(lambdas_dir),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=asset_hash(directories, requirements),
        bundling=BundlingOptions(
            image=RUNTIME.bundling_image,
            local=PipLocalBundling(directories, requirements),
            command=[
                "bash",
                "-c",
                "echo 'the Lambda asset is bundled locally (pip); Docker is not used'; exit 1",
            ],
        ),
    )
