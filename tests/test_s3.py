"""`orchestrator launch --results s3://...` end to end against a local S3 server (moto) on 127.0.0.1.

Real Ray, real trials: an FGSM source, a baseline and one regularized trial (digits, width 4, 1 epoch) write their
Parquet files, checkpoints and FGSM sign cache into the bucket; the transferred-FGSM attack reads its source
checkpoint back through the URI. Then: resume skips every trial, `status` and `orchestrator.load` read the URI, and the
aggregation wrote summary/best there. Nothing here talks to any address but 127.0.0.1, and the credentials are dummy
values. Skipped when moto (the `dev` extra) is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml
from conftest import S3_BUCKET as BUCKET
from conftest import TINY_TRAIN, local_ray

import orchestrator
from orchestrator import cli


@pytest.fixture(scope="module")
def ray_session(s3_root):
    with local_ray() as ray:
        yield ray


main = cli.main  # the real console-script entry


def keys_under(uri: str) -> set[str]:
    fs, base = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    return {i.path.removeprefix(base + "/") for i in infos if i.type == pafs.FileType.File}


@pytest.mark.slow
def test_sweep_on_s3_launch_resume_status_aggregate_load(s3_root, ray_session, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory (e.g. an "s3:" folder)
    spec = tmp_path / "s3tiny.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "s3tiny", "pairs": [{"task": "digits", "reg_data": "digits"}],
        "grid": {"points": [{"th": 0.3, "alpha": 1.0}]}, "seeds": 1, "baseline": True,
        "train": TINY_TRAIN,
        "attacks": {"gaussian": {"images": 20, "num_eps": 2}, "fgsm_transfer": {"images": 20, "num_eps": 2}},
        "resources": {"cpu": 1}, "max_failures": 0}))
    launch = ["launch", str(spec), "--results", s3_root, "--progress-every", "2"]
    sweep = f"s3://{BUCKET}/runs/s3tiny?" + s3_root.partition("?")[2]

    assert main(launch) == 0
    out = capsys.readouterr().out
    assert "every trial ok" in out, out
    assert f"summary: s3://{BUCKET}/runs/s3tiny/summary.parquet?" in out
    assert "figures: not drawn for a URI" in out
    r = orchestrator.load(sweep)
    assert sorted(r.trials["role"]) == ["baseline", "fgsm_source", "trial"]
    assert set(r.trials["status"]) == {"ok"}, r.trials[["role", "error"]]
    assert set(r.robustness["attack"]) == {"gaussian", "fgsm_transfer"}
    assert len(r.summary) and len(r.best) and set(r.best["attack"]) == {"gaussian", "fgsm_transfer"}
    stored = keys_under(sweep)
    assert {"spec.yaml", "fingerprint", "summary.parquet", "best.parquet"} <= stored
    assert {f"checkpoints/{t}.pt" for t in r.trials["trial_id"]} <= stored
    assert any(k.startswith("fgsm_cache/fgsm_signs/") for k in stored)
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["s3tiny.yaml"]

    assert main(launch) == 0  # resume: everything is done, nothing reruns
    assert "3 complete from earlier launches, 0 to run" in capsys.readouterr().out

    assert main(["status", sweep]) == 0
    assert "ok 3; pending 0 of 3" in capsys.readouterr().out
