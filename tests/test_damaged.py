"""A sweep folder that tolerates a bad file (docs/reliability.md): random bytes, a zero-length file or a stray file
in a finished folder never stops `status`, `aggregate`, `report`, `load` or a relaunch; a damaged file is named in
one line, moved into quarantine/ (never deleted) and counted as missing, and the relaunch redoes what it held.

One tiny finished sweep is launched once for the module (real Ray Tune trials); each case damages a copy of it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import local_ray, write_spec

import orchestrator
from orchestrator import cli
from orchestrator.sweepdir.lock import LOCK_FILE
from pixelreg_core.results import QUARANTINE_DIR, TABLES, TIMING_COLUMNS, own_files, read_table


@pytest.fixture(scope="module")
def ray_session():
    with local_ray() as ray:
        yield ray


@pytest.fixture(scope="module")
def finished(ray_session, tmp_path_factory) -> tuple[Path, Path]:
    """(spec, the finished sweep folder): one regularized point x 2 seeds and baselines, the Gaussian attack."""
    base = tmp_path_factory.mktemp("finished")
    spec = write_spec(base)
    assert launch(spec, base / "results") == 0
    return spec, base / "results" / "tiny"


def launch(spec: Path, root: Path) -> int:
    return cli.main(["launch", str(spec), "--results", str(root), "--progress-every", "60", "--no-figures"])


def copy_of(finished: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    spec, sweep = finished
    root = tmp_path / "results"
    shutil.copytree(sweep, root / sweep.name)
    return spec, root / sweep.name


def damage(path: Path, how: str) -> None:
    path.write_bytes(os.urandom(100) if how == "random" else b"")


def tables(sweep: Path) -> dict[str, pd.DataFrame]:
    """Every table without its timing columns, sorted: what two runs of the same trials share on one CPU."""
    out = {}
    for table in TABLES:
        frame = read_table(sweep, table).drop(columns=list(TIMING_COLUMNS.get(table, ())))
        if table == "trials":  # the checkpoint's path names the folder, and the copy lives elsewhere
            frame["checkpoint"] = frame["checkpoint"].map(lambda p: Path(p).name)
        keys = [c for c in ("trial_id", "eval_id", "epoch", "eps", "repeat", "metric", "radius") if c in frame]
        out[table] = frame.sort_values(keys).reset_index(drop=True)
    return out


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("how", ["random", "empty"])
def test_a_damaged_table_file_is_named_quarantined_and_the_readers_go_on(finished, tmp_path, capsys, table, how):
    _, sweep = copy_of(finished, tmp_path)
    name = own_files(sweep, table)[0]
    damage(sweep / table / name, how)
    capsys.readouterr()
    assert cli.main(["status", str(sweep)]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if "unreadable" in line]
    if table in ("trials",):  # status reads the trials table: it finds the damage itself
        assert len(lines) == 1 and lines[0].startswith(f"{table}/{name}: unreadable"), err
    assert cli.main(["aggregate", str(sweep), "--no-figures"]) == 0
    out2, err2 = capsys.readouterr()
    lines += [line for line in err2.splitlines() if "unreadable" in line]
    assert len(lines) == 1, lines  # one line, once: the file is out of the way after
    model = name.split(".")[0]
    assert f"{table}/{name}: unreadable" in lines[0] and model in lines[0] and "moved to quarantine/" in lines[0]
    assert (sweep / QUARANTINE_DIR / table / name).is_file()  # never deleted
    assert not (sweep / table / name).exists()
    results = orchestrator.load(sweep)
    assert len(results.trials) >= 3 and len(results.summary)
    assert cli.main(["status", str(sweep)]) == 0
    assert f"{table}/{name}" in capsys.readouterr().out  # status lists what is quarantined


@pytest.mark.parametrize("table", TABLES)
def test_a_stray_file_in_a_table_folder_is_never_read(finished, tmp_path, capsys, table):
    _, sweep = copy_of(finished, tmp_path)
    (sweep / table / "notes.txt").write_bytes(b"abc")
    (sweep / table / "copy of results.parquet").write_bytes(os.urandom(50))
    before = len(pd.concat([pd.read_parquet(sweep / table / n) for n in own_files(sweep, table)]))
    capsys.readouterr()
    assert cli.main(["aggregate", str(sweep), "--no-figures"]) == 0
    assert cli.main(["status", str(sweep)]) == 0
    assert len(getattr(orchestrator.load(sweep, everything=True), table)) == before
    assert "unreadable" not in capsys.readouterr().err
    assert (sweep / table / "notes.txt").read_bytes() == b"abc"  # not ours: left alone
    assert not (sweep / QUARANTINE_DIR).exists()


def test_a_relaunch_restores_what_damaged_files_held(finished, tmp_path, capsys):
    """Random bytes in an evaluation's robustness file, a model's epochs file and another model's checkpoint,
    spec.yaml and the lock file; a zero-length spectrum file: one relaunch redoes exactly what they held, and the
    tables equal the undamaged folder's (deterministic on one CPU)."""
    spec, sweep = copy_of(finished, tmp_path)
    want = tables(sweep)
    evaluations = own_files(sweep, "robustness")
    models = own_files(sweep, "epochs")
    damage(sweep / "robustness" / evaluations[0], "random")
    damage(sweep / "spectrum" / evaluations[1], "empty")
    damage(sweep / "epochs" / models[2], "random")
    checkpoint = sweep / "checkpoints" / models[3].replace(".parquet", ".pt")
    damage(checkpoint, "random")
    damage(sweep / "spec.yaml", "random")
    (sweep / "trials" / "notes.txt").write_text("stray")
    capsys.readouterr()
    assert cli.main(["status", str(sweep)]) == 0  # the damaged spec.yaml: the newest specs/ version stands in
    assert "pending" in capsys.readouterr().out
    damage(sweep / LOCK_FILE, "random")  # a lock file nobody can read: a launch that died mid-write
    assert launch(spec, sweep.parent) == 0
    out, err = capsys.readouterr()
    assert "every trial ok" in out
    named = sorted(line.split(": unreadable (")[0] for line in err.splitlines() if ": unreadable (" in line)
    assert named == sorted([f"robustness/{evaluations[0]}", f"spectrum/{evaluations[1]}", f"epochs/{models[2]}",
                            f"checkpoints/{checkpoint.name}"]), err  # one line each (spec.yaml: by status above)
    assert "unreadable lock file" in out
    got = tables(sweep)
    for table in TABLES:
        pd.testing.assert_frame_equal(got[table], want[table], check_exact=False, rtol=1e-9, obj=table)
    aside = sorted(str(p.relative_to(sweep / QUARANTINE_DIR)) for p in (sweep / QUARANTINE_DIR).rglob("*")
                   if p.is_file())
    assert f"robustness/{evaluations[0]}" in aside and f"spectrum/{evaluations[1]}" in aside
    assert f"epochs/{models[2]}" in aside and f"checkpoints/{checkpoint.name}" in aside and "spec.yaml" in aside
    assert (sweep / "spec.yaml").read_text() == spec.read_text()  # written again by the relaunch
    assert (sweep / "trials" / "notes.txt").read_text() == "stray"


def test_a_damaged_epoch_checkpoint_is_quarantined_and_the_trial_starts_over(tmp_path, capsys, one_thread):
    """Random bytes in a trial's per-epoch checkpoint: one line, the file in quarantine/, the trial trains from
    epoch 1 and finishes ok."""
    from conftest import tiny

    from pixelreg_core.checkpoint import running_path
    from pixelreg_core.trial import run_trial

    cfg = tiny(alpha=1.0, epochs=1)
    running = Path(running_path(tmp_path, cfg.trial_id))
    running.parent.mkdir(parents=True)
    running.write_bytes(os.urandom(100))
    row = run_trial(cfg, tmp_path)
    assert row["status"] == "ok" and row["resumed_from_epoch"] == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if ": unreadable (" in line]
    assert len(lines) == 1 and lines[0].startswith(f"checkpoints/running/{cfg.trial_id}.pt: unreadable"), lines
    assert "starts again from epoch 1" in lines[0]
    assert (tmp_path / QUARANTINE_DIR / "checkpoints" / "running" / f"{cfg.trial_id}.pt").is_file()
