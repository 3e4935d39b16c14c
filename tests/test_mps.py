"""`launch --mps`: one-line refusals where MPS cannot work, and the daemon's start/stop around a launch."""

from __future__ import annotations

import os
import stat

import pytest
from conftest import write_spec

from orchestrator import cli
from orchestrator.errors import UserError
from orchestrator.localray import mps


def test_mps_for_a_cpu_only_spec_is_one_line_and_writes_nothing(tmp_path, capsys):
    root = tmp_path / "results"
    code = cli.main(["launch", str(write_spec(tmp_path, seeds=[0], baseline=False)), "--results", str(root), "--mps"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--mps" in err and "resources.gpu" in err
    assert not root.exists() or not any(root.rglob("*.parquet"))


def test_mps_without_the_control_binary_or_on_a_cluster_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no nvidia-cuda-mps-control
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(UserError, match="nvidia-cuda-mps-control not found"):
        mps.check(True, address=None, gpu_per_trial=0.25)
    with pytest.raises(UserError, match="local Ray"):
        mps.check(True, address="auto", gpu_per_trial=0.25)
    assert mps.check(False, address=None, gpu_per_trial=0.25) is None


def test_the_daemon_is_started_for_the_block_and_stopped_after_it_even_on_failure(monkeypatch, tmp_path):
    """The real subprocess handling, against a recording executable in place of the NVIDIA binary (none here)."""
    calls = tmp_path / "calls.txt"
    control = tmp_path / mps.CONTROL
    control.write_text(f'#!/bin/sh\necho "$@ $(cat 2>/dev/null) pipe=$CUDA_MPS_PIPE_DIRECTORY" >> {calls}\n')
    control.chmod(control.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    path = mps.check(True, address=None, gpu_per_trial=0.5)
    with pytest.raises(RuntimeError, match="trial crashed"), mps.daemon(path, log=lambda line: None):
        pipe = os.environ["CUDA_MPS_PIPE_DIRECTORY"]  # what Ray's workers inherit
        assert os.path.isdir(pipe)
        raise RuntimeError("trial crashed")
    lines = calls.read_text().splitlines()
    assert lines[0].startswith("-d") and lines[1].split()[0] == "quit" and all(pipe in line for line in lines)
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ and not os.path.exists(pipe)


def test_a_daemon_that_fails_to_start_is_one_line(monkeypatch, tmp_path):
    control = tmp_path / mps.CONTROL
    control.write_text("#!/bin/sh\necho 'An instance of this daemon is already running' >&2\nexit 1\n")
    control.chmod(control.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(UserError, match="already running"), mps.daemon(str(control), log=lambda line: None):
        pass


def test_a_daemon_that_does_not_answer_quit_is_left_with_one_warning_not_a_hang(monkeypatch, tmp_path):
    # `-d` returns at once; `quit` never answers (the recording executable sleeps): the block ends within the limit
    control = tmp_path / mps.CONTROL
    control.write_text('#!/bin/sh\nif [ "$1" = "-d" ]; then exit 0; fi\nexec sleep 600\n')
    control.chmod(control.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(mps, "TIMEOUT_S", 1.0)
    lines: list[str] = []
    with mps.daemon(str(control), log=lines.append):
        pass
    assert lines[-1].startswith("warning: stopping the CUDA MPS daemon failed (no answer within 1 s)")
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ
