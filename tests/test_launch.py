"""`orchestrator launch` / `status` end to end through a real Ray Tune, plus the security lines a launch prints
(orchestrator/localray/start.py).

One local Ray (tests/conftest.py's local_ray) serves the whole module: starting Ray takes seconds. Sweeps are tiny
(digits, width 4, 1 epoch, 100 train images, gaussian noise on 20 test images) but real: torch training, Tune
scheduling, Parquet files. These launches run in this process, a few seconds each, so they are in the fast tier:
they are the only tests of launch.py and orchestrator/run/ (the `slow` tier has the launches in their own
processes: SIGKILL, clusters, S3, and variants of a path tested here). Each launch checks every promise it can.
"""

from __future__ import annotations

import json
import os
import re
import weakref
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_TRAIN, local_ray, write_spec

from orchestrator import cli
from orchestrator.localray.start import access_lines, security_warnings
from pixelreg_core.hooks import faults


@pytest.fixture(scope="module")
def fault_file(tmp_path_factory):
    """The fault plan the Ray workers read (PIXELREG_FAULTS=@FILE, set before Ray starts so workers inherit it);
    a test writes its plan there and the fixture below empties it again."""
    path = tmp_path_factory.mktemp("faults") / "plan.json"
    before = os.environ.get(faults.ENV)
    os.environ[faults.ENV] = f"@{path}"
    yield path
    if before is None:
        os.environ.pop(faults.ENV, None)
    else:
        os.environ[faults.ENV] = before


@pytest.fixture(scope="module")
def ray_session(fault_file):
    with local_ray() as ray:
        yield ray


@pytest.fixture
def inject(fault_file, tmp_path):
    def plan(*faults_list: dict) -> None:
        fault_file.write_text(json.dumps({"dir": str(tmp_path / "marks"), "faults": list(faults_list)}))

    yield plan
    fault_file.unlink(missing_ok=True)


def trial_ids(spec: Path, root: Path) -> dict[str, str]:
    """role/seed -> trial id, from the real expansion."""
    from orchestrator.spec.expand import expand
    from orchestrator.spec.load import load_spec

    return {f"{c.role}/{c.seed}": c.trial_id for c in expand(load_spec(spec), str(root / load_spec(spec).name))}


main = cli.main  # the real console-script entry


def launch(spec: Path, root: Path, *extra: str, figures: bool = False) -> int:
    """The launch command; without its figures (seconds of matplotlib per launch) unless a test asks for them."""
    return main(["launch", str(spec), "--results", str(root), "--progress-every", "2", *extra,
                 *([] if figures else ["--no-figures"])])


# ------------------------------------------------------------------------------------------ end to end (Ray)


def test_tiny_sweep_end_to_end_then_resume_is_a_no_op_and_an_override_grows_it(ray_session, tmp_path, capsys):
    """A tiny sweep end to end; a relaunch runs nothing; `launch SPEC --results R seeds=3` trains only seed 2's
    models, the folder records the spec with the override applied and status names it as the current spec; the
    same override again runs nothing; --fresh starts the folder over. (One launch sequence for all of it: each
    launch costs seconds of Tune start-up.)"""
    spec = write_spec(tmp_path, seeds=2)
    root = tmp_path / "results"
    assert launch(spec, root, figures=True) == 0
    out = capsys.readouterr().out
    sweep = root / "tiny"
    assert f"figures: {sweep / 'figures'} (" in out and list((sweep / "figures").iterdir())
    trials = pd.read_parquet(sweep / "trials")
    epochs = pd.read_parquet(sweep / "epochs")
    robustness = pd.read_parquet(sweep / "robustness")
    assert sorted(trials["role"]) == ["baseline", "baseline", "trial", "trial"]
    assert set(trials["status"]) == {"ok"}, trials[["role", "error"]]
    assert trials["trial_id"].is_unique
    assert len(epochs) == 4 and set(epochs["epoch"]) == {1}
    assert set(robustness["attack"]) == {"gaussian"} and len(robustness) == 4 * 2
    assert (sweep / "spec.yaml").read_text() == spec.read_text()
    assert "every trial ok" in out and "done 4/4" in out
    # the closing lines say per attack what was chosen and how sure (2 seeds a side: a p_chosen exists)
    assert re.search(r"digits / digits / gaussian: .*(p_chosen|P\(no setting acceptable\)) \d\.\d\d: "
                     r"(decided|undecided)", out), out
    # every epoch went to Tune: its TensorBoard logger wrote event files
    assert list((sweep / "tune").rglob("events.out.tfevents*"))
    # Tune's own trial records hold the real fields under readable names, not a hash
    params = {Path(p).parent.name: json.loads(Path(p).read_text()) for p in (sweep / "tune").rglob("params.json")}
    regularized = [v for v in params.values() if v["role"] == "trial"]
    assert len(params) == 4 and sorted(v["seed"] for v in regularized) == [0, 1]
    assert {(v["task"], v["reg_data"], v["th"], v["alpha"]) for v in regularized} == {("digits", "digits", 0.3, 1.0)}
    assert any(name.startswith("trial_digits-digits_th0.3_a1_s1_") for name in params), sorted(params)
    # json config per trial carries the thread count the launcher set (1 CPU per trial)
    assert {json.loads(c)["num_threads"] for c in trials["config"]} == {1}

    mtimes = {p.name: p.stat().st_mtime_ns for p in (sweep / "trials").iterdir()}
    assert launch(spec, root) == 0
    out = capsys.readouterr().out
    assert "4 complete from earlier launches, 0 to run" in out
    assert {p.name: p.stat().st_mtime_ns for p in (sweep / "trials").iterdir()} == mtimes

    assert main(["status", str(sweep)]) == 0
    status = capsys.readouterr().out
    assert "ok 4; pending 0 of 4" in status
    assert "chosen, as of the last aggregate" in status and "digits / digits / gaussian: " in status
    assert "baseline" in status and "trial" in status

    # a command-line override grows the study: only seed 2's models train
    assert launch(spec, root, "seeds=3") == 0
    out = capsys.readouterr().out
    assert "4 complete from earlier launches, 2 to run" in out and "every trial ok" in out
    grown = pd.read_parquet(sweep / "trials")
    assert sorted(grown["seed"]) == [0, 0, 1, 1, 2, 2] and set(grown["status"]) == {"ok"}
    now = {p.name: p.stat().st_mtime_ns for p in (sweep / "trials").iterdir()}
    assert {name: now[name] for name in mtimes} == mtimes  # seeds 0 and 1's models were not trained again
    recorded = (sweep / "spec.yaml").read_text()
    assert recorded.startswith(f"# {spec} with overrides: seeds=3\n") and "\nseeds: 3\n" in recorded
    versions = sorted((sweep / "specs").iterdir())
    assert len(versions) == 2 and versions[-1].read_text() == recorded
    assert main(["status", str(sweep)]) == 0
    status = capsys.readouterr().out
    assert status.startswith(f"spec: version 2 of 2 (specs/{versions[-1].name}); since version 1: seeds: 3 (was 2)")
    assert "ok 6; pending 0 of 6" in status
    assert launch(spec, root, "seeds=3") == 0  # the same override again: nothing to run, no third version
    assert "6 complete from earlier launches, 0 to run" in capsys.readouterr().out
    assert len(list((sweep / "specs").iterdir())) == 2

    # --fresh starts the folder over (another spec under the same name grows the study instead:
    # test_a_study_grows_by_seeds_points_pairs_and_attacks_and_evaluate_trains_nothing)
    old_ids = set(grown["trial_id"])
    second = write_spec(tmp_path, seeds=[0], baseline=False, grid={"th": [0.5], "alpha": [2.0]})
    assert launch(second, root, "--fresh") == 0
    trials = pd.read_parquet(sweep / "trials")
    assert len(trials) == 1 and not set(trials["trial_id"]) & old_ids
    assert trials["th"].tolist() == [0.5] and trials["status"].tolist() == ["ok"]


@pytest.mark.slow  # packed training itself: tests/test_pack.py (a packed trial writes what separate runs do)
def test_seed_packs_write_each_trial_as_an_unpacked_launch_does(ray_session, tmp_path, capsys):
    """`pack: 4`: the 4 regularized trials (2 th x 2 seeds) train as one Tune trial, the 2 baselines as another;
    every trial has its own trials and epochs rows under the id an unpacked launch gives it."""
    grid = {"th": [0.3, 0.6], "alpha": [1.0]}
    packed = write_spec(tmp_path, grid=grid, train={**TINY_TRAIN, "pack": 4})
    apart = write_spec(tmp_path, grid=grid)
    assert launch(packed, tmp_path / "packed") == 0
    out = capsys.readouterr().out
    assert "done 6/6" in out and "every trial ok" in out
    assert launch(apart, tmp_path / "apart") == 0
    tables = {}
    for name in ("packed", "apart"):
        sweep = tmp_path / name / "tiny"
        tables[name] = (pd.read_parquet(sweep / "trials"), pd.read_parquet(sweep / "epochs"))
    (trials, epochs), (trials_apart, epochs_apart) = tables["packed"], tables["apart"]
    assert set(trials["status"]) == {"ok"} and len(trials) == 6
    assert sorted(trials["trial_id"]) == sorted(trials_apart["trial_id"])
    assert sorted(epochs["trial_id"]) == sorted(epochs_apart["trial_id"])  # one row per trial (1 epoch)
    assert {json.loads(c)["pack"] for c in trials["config"]} == {4}
    assert trials.groupby("role")["train_s"].nunique().to_dict() == {"baseline": 1, "trial": 1}  # one per pack
    names = sorted(Path(p).parent.name for p in (tmp_path / "packed" / "tiny" / "tune").rglob("params.json"))
    assert len(names) == 2 and sum("_pack4_" in n for n in names) == 1 and sum("_pack2_" in n for n in names) == 1


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*") if p.is_file()}


@pytest.mark.slow
def test_a_study_grows_by_seeds_points_pairs_and_attacks_and_evaluate_trains_nothing(ray_session, tmp_path, capsys):
    """A finished tiny sweep, then its spec with one more seed, (th, alpha) point, pair and attack: the relaunch
    trains only the new models (the old models' files untouched) and evaluates the new attack on every model;
    `evaluate` then adds a third attack without a training step."""
    root = tmp_path / "results"
    sweep = root / "grow"
    point = {"th": 0.3, "alpha": 1.0}
    first = write_spec(tmp_path, name="grow", seeds=[0], grid={"points": [point]})
    assert launch(first, root) == 0
    old = {folder: mtimes(sweep / folder) for folder in ("trials", "epochs", "checkpoints", "robustness")}
    old_ids = set(pd.read_parquet(sweep / "trials")["trial_id"])
    assert len(old_ids) == 2 and len(old["robustness"]) == 2

    gaussian = {"images": 20, "num_eps": 2}
    grown = write_spec(tmp_path, name="grow", seeds=[0, 1], grid={"points": [point, {"th": 0.5, "alpha": 2.0}]},
                       pairs=[{"task": "digits", "reg_data": "digits"}, {"task": "mnist5k", "reg_data": "mnist5k"}],
                       attacks={"gaussian": gaussian, "uniform": {"images": 20, "num_eps": 2}})
    capsys.readouterr()
    assert main(["plan", str(grown), "--results", str(root), "--no-measure"]) == 0
    assert ("to train: 10 model(s); to evaluate: 2 (model, attack) on 2 stored model(s) (uniform 2); reused as "
            "they are: 0 model(s)") in capsys.readouterr().out
    assert launch(grown, root) == 0
    out = capsys.readouterr().out
    assert "the spec changed since the last launch" in out and "every trial ok" in out
    trials = pd.read_parquet(sweep / "trials")
    assert len(trials) == 12 and trials["trial_id"].is_unique and set(trials["status"]) == {"ok"}
    assert old_ids < set(trials["trial_id"])
    for folder in ("trials", "epochs", "checkpoints"):  # the old models were not trained or rewritten
        now = mtimes(sweep / folder)
        assert {name: now[name] for name in old[folder]} == old[folder], folder
    now = mtimes(sweep / "robustness")
    assert {name: now[name] for name in old["robustness"]} == old["robustness"]  # old evaluations untouched
    epochs = pd.read_parquet(sweep / "epochs")
    assert len(epochs) == 12 and not epochs.duplicated(["trial_id", "epoch"]).any()
    robustness = pd.read_parquet(sweep / "robustness")
    per_model = robustness.groupby("trial_id")["attack"].agg(lambda a: tuple(sorted(set(a))))
    assert len(per_model) == 12 and set(per_model) == {("gaussian", "uniform")}  # old models got uniform too
    assert not robustness.duplicated(["trial_id", "attack", "eps", "repeat", "metric"]).any()
    assert sorted(p.name.split("-")[0] for p in (sweep / "specs").iterdir()) == ["1", "2"]  # both versions kept
    summary = pd.read_parquet(sweep / "summary.parquet")
    assert {("digits", "gaussian"), ("digits", "uniform"), ("mnist5k", "uniform")} <= set(
        zip(summary["task"], summary["attack"], strict=True))

    third = write_spec(tmp_path, name="grow", seeds=[0, 1], grid={"points": [point, {"th": 0.5, "alpha": 2.0}]},
                       pairs=[{"task": "digits", "reg_data": "digits"}, {"task": "mnist5k", "reg_data": "mnist5k"}],
                       attacks={"gaussian": gaussian, "uniform": {"images": 20, "num_eps": 2},
                                "salt_pepper": {"images": 20, "num_eps": 2}})
    before = {folder: mtimes(sweep / folder) for folder in ("trials", "epochs", "checkpoints")}
    assert main(["evaluate", str(third), "--results", str(root), "--progress-every", "2"]) == 0
    for folder, files in before.items():  # no training step: no epochs, checkpoint or trials file written
        assert mtimes(sweep / folder) == files, folder
    assert not (sweep / "checkpoints" / "running").exists() or not list((sweep / "checkpoints" / "running").iterdir())
    robustness = pd.read_parquet(sweep / "robustness")
    assert robustness.loc[robustness["attack"] == "salt_pepper", "trial_id"].nunique() == 12


def test_injected_faults_are_retried_from_the_last_epoch_or_fail_at_once(ray_session, tmp_path, inject, capsys):
    """The CI fault test: an exception and a worker SIGKILL after epoch 1 resume from epoch 1's checkpoint; a NaN
    loss is a ConfigError ("lower lr or alpha"): not retried, the trial fails at once and leaves no rows, the sweep
    goes on, prints its summary, then exits 1. Same mechanism as scripts/soak.py, at tiny scale."""
    spec = write_spec(tmp_path, name="faults", seeds=[0, 1, 2], baseline=False,
                      train={**TINY_TRAIN, "epochs": 2}, max_failures=1)
    root = tmp_path / "results"
    ids = trial_ids(spec, root)
    inject({"trial": ids["trial/0"], "epoch": 1, "kind": "raise"},
           {"trial": ids["trial/1"], "epoch": 1, "kind": "sigkill"},
           {"trial": ids["trial/2"], "epoch": 1, "kind": "nan"})
    assert launch(spec, root) == 1  # the sweep ran, reported the failure, and says so in its exit code
    out = capsys.readouterr().out
    assert "1 trial(s) failed or blocked" in out and "summary:" in out  # the summary came before the exit
    trials = pd.read_parquet(root / "faults" / "trials").set_index("trial_id")
    assert trials.index.is_unique
    for seed in (0, 1):
        row = trials.loc[ids[f"trial/{seed}"]]
        assert row["status"] == "ok" and row["resumed_from_epoch"] == 1, (seed, row["error"])
    nan = trials.loc[ids["trial/2"]]
    assert nan["status"] == "failed" and "loss became nan" in nan["error"] and "not retried" in nan["error"]
    assert "attempt" not in nan["error"]  # max_failures 1 was not used
    epochs = pd.read_parquet(root / "faults" / "epochs")
    # the failed trial left no rows behind: 2 ok trials x 2 epochs
    assert len(epochs) == 4 and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert ids["trial/2"] not in set(epochs["trial_id"])
    # a relaunch resumes the failed trial from its epoch-1 checkpoint (the fault fired once) and finishes it
    assert launch(spec, root) == 0
    trials = pd.read_parquet(root / "faults" / "trials").set_index("trial_id")
    assert set(trials["status"]) == {"ok"} and trials.loc[ids["trial/2"], "resumed_from_epoch"] == 1


def test_models_train_while_their_fgsm_source_trains_and_a_failed_source_blocks_only_its_evaluations(
        ray_session, tmp_path, inject, capsys):
    """No idle slot (issue 18): the source is one phase with the other models, which train beside it where Ray has
    a second slot (not under the fast tier's two workers: conftest.local_ray); a transferred evaluation waits for
    the source's checkpoint. A source that fails blocks only the evaluations that need it: the models train, their
    other attacks run, their trials rows say why fgsm_transfer is missing, the launch exits 1; a relaunch trains
    the source and runs just those evaluations."""
    spec = write_spec(tmp_path, name="blocked", seeds=[0], max_failures=0,
                      attacks={"gaussian": {"images": 20, "num_eps": 2}, "fgsm_transfer": {"num_eps": 2}})
    root = tmp_path / "results"
    sweep = root / "blocked"
    ids = trial_ids(spec, root)
    inject({"trial": ids["fgsm_source/1000"], "epoch": 1, "kind": "raise"})
    assert launch(spec, root) == 1
    out = capsys.readouterr().out
    assert "without their transferred evaluation" in out and "evaluation(s) of trained models failed" in out
    trials = pd.read_parquet(sweep / "trials").set_index("trial_id")
    assert trials.loc[ids["fgsm_source/1000"], "status"] == "failed"
    robustness = pd.read_parquet(sweep / "robustness")
    for key in ("baseline/0", "trial/0"):
        row = trials.loc[ids[key]]
        assert row["status"] == "ok" and ids["fgsm_source/1000"] in row["error"] and "FGSM source" in row["error"]
        assert set(robustness.loc[robustness["trial_id"] == ids[key], "attack"]) == {"gaussian"}
    epochs_before = mtimes(sweep / "epochs")
    assert main(["status", str(sweep)]) == 0
    assert ids["fgsm_source/1000"] in capsys.readouterr().out

    inject()  # the source trains now; only the missing evaluations run
    assert launch(spec, root) == 0
    assert "done 3/3" in capsys.readouterr().out  # the deferred evaluations are not counted as more trials
    trials = pd.read_parquet(sweep / "trials").set_index("trial_id")
    assert set(trials["status"]) == {"ok"} and trials["error"].isna().all()
    now = mtimes(sweep / "epochs")
    assert {name: now[name] for name in epochs_before} == epochs_before  # the models were not trained again
    robustness = pd.read_parquet(sweep / "robustness")
    for key in ("baseline/0", "trial/0"):
        assert set(robustness.loc[robustness["trial_id"] == ids[key], "attack"]) == {"gaussian", "fgsm_transfer"}


@pytest.mark.slow
def test_a_full_disk_mid_sweep_ends_with_one_line_and_a_relaunch_completes(ray_session, tmp_path, capsys, inject):
    """ENOSPC injected at the write layer (PIXELREG_FAULTS kind enospc): the disk fills while trial/1 saves its
    first epoch and stays full. No table holds a partial file, the launch ends with one line naming the folder,
    and once space is back the same launch finishes with nothing lost or repeated."""
    import pyarrow.parquet as pq

    from pixelreg_core.results import TABLES

    spec = write_spec(tmp_path, name="full", seeds=[0, 1, 2])
    root = tmp_path / "results"
    sweep = root / "full"
    ids = trial_ids(spec, root)
    inject({"trial": ids["trial/1"], "kind": "enospc"})
    assert launch(spec, root) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(sweep) in errors[0] and "no space left on device" in errors[0], errors
    assert (tmp_path / "marks" / faults.DISK_FULL_MARKER).exists()  # the fault fired
    finished = {p.name: p.stat().st_mtime_ns for p in (sweep / "trials").glob("*.parquet")}
    for table in TABLES:  # every file in a table is whole, and only finished trials have any
        for path in (sweep / table).glob("*"):
            assert f"{path.name.split('.')[0]}.parquet" in finished and pq.read_table(path) is not None, path
    assert f"{ids['trial/1']}.parquet" not in finished
    assert set(pd.read_parquet(sweep / "trials")["status"]) <= {"ok"}

    (tmp_path / "marks" / faults.DISK_FULL_MARKER).unlink()  # space is back
    assert launch(spec, root) == 0
    trials = pd.read_parquet(sweep / "trials")
    assert len(trials) == 6 and trials["trial_id"].is_unique and set(trials["status"]) == {"ok"}
    assert {p: (sweep / "trials" / p).stat().st_mtime_ns for p in finished} == finished  # not rerun
    assert pd.read_parquet(sweep / "epochs").groupby("trial_id").size().eq(1).all()  # nothing repeated
    assert not list((sweep / ".tmp").glob("*"))


def test_optuna_search_with_asha_trains_its_budget_against_the_baselines(ray_session, tmp_path, capsys):
    spec = write_spec(tmp_path, name="searched", grid=None, seeds=[0],
                      search={"type": "optuna", "trials": 2, "th": [0.2, 0.8], "alpha": [0.5, 8.0],
                              "objective": {"attack": "gaussian", "eps": 0.5, "min_clean_ratio": 0.5},
                              "start": [{"th": 0.3, "alpha": 2.0}]},
                      scheduler={"type": "asha", "grace_period": 1})
    root = tmp_path / "results"
    assert launch(spec, root) == 0
    trials = pd.read_parquet(root / "searched" / "trials")
    assert sorted(trials["role"]) == ["baseline", "trial", "trial"]
    assert set(trials["status"]) == {"ok"}
    searched = trials[trials["role"] == "trial"]
    assert searched["th"].between(0.2, 0.8).all() and searched["alpha"].between(0.5, 8.0).all()
    assert ((searched["th"] == 0.3) & (searched["alpha"] == 2.0)).sum() == 1  # the start point ran, once
    # the study outlives the launch: Optuna itself opens it from the sweep folder
    import optuna

    storage = f"sqlite:///{root / 'searched' / 'optuna.db'}"
    study = optuna.load_study(study_name="searched/digits/digits", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2 and {"th": 0.3, "alpha": 2.0} in [t.params for t in complete]
    # a relaunch reopens the study instead of training more
    capsys.readouterr()
    assert launch(spec, root) == 0
    assert len(pd.read_parquet(root / "searched" / "trials")) == 3
    assert len(optuna.load_study(study_name="searched/digits/digits", storage=storage).trials) == 2


@pytest.mark.slow
def test_optuna_trains_a_points_seeds_as_one_seed_pack(ray_session, tmp_path):
    """`pack: 2`: the start point's two seeds train as one pack inside its Optuna trial (as do the 2 baselines in
    the grid phase); the study gets its objective from their rows as from separate runs."""
    spec = write_spec(tmp_path, name="packsearch", grid=None, train={**TINY_TRAIN, "pack": 2},
                      search={"type": "optuna", "trials": 1, "th": [0.2, 0.8], "alpha": [0.5, 8.0],
                              "objective": {"attack": "gaussian", "eps": 0.5, "min_clean_ratio": 0.5},
                              "start": [{"th": 0.3, "alpha": 2.0}]})
    root = tmp_path / "results"
    assert launch(spec, root) == 0
    trials = pd.read_parquet(root / "packsearch" / "trials")
    assert sorted(trials["role"]) == ["baseline", "baseline", "trial", "trial"] and set(trials["status"]) == {"ok"}
    assert sorted(trials[trials["role"] == "trial"]["seed"]) == [0, 1]
    for role in ("trial", "baseline"):  # packed: one training time, shared by the pack's members
        assert trials[trials["role"] == role]["train_s"].nunique() == 1
    import optuna

    study = optuna.load_study(study_name="packsearch/digits/digits",
                              storage=f"sqlite:///{root / 'packsearch' / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]


@pytest.mark.slow  # the rule, fast: tests/test_tune.py (asha_max_t)
def test_asha_lets_the_longest_trial_of_an_epochs_grid_finish(ray_session, tmp_path):
    """ASHA's max_t comes from the longest trial: with train.epochs 1 and a grid epochs [1, 3], the 3-epoch
    trial must train its 3 epochs and end ok, not be cut at 2 reports and recorded `stopped`."""
    spec = write_spec(tmp_path, name="epochs", baseline=False, seeds=[0],
                      grid={"th": [0.3], "alpha": [1.0], "epochs": [1, 3]},
                      scheduler={"type": "asha", "grace_period": 3})
    root = tmp_path / "results"
    assert launch(spec, root) == 0
    trials = pd.read_parquet(root / "epochs" / "trials").set_index("epochs")
    assert sorted(trials.index) == [1, 3]
    assert trials.loc[3, "status"] == "ok", trials.loc[3, "error"]
    epochs = pd.read_parquet(root / "epochs" / "epochs")
    assert sorted(epochs.loc[epochs["trial_id"] == trials.loc[3, "trial_id"], "epoch"]) == [1, 2, 3]


# ------------------------------------------------------------------------------------------ bad input (no Ray)


def test_unwritable_results_root_is_one_line_and_writes_nothing(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    spec = write_spec(tmp_path)
    assert launch(spec, blocker / "results") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --results") and "is a file" in err and err.count("\n") == 1
    assert blocker.read_text() == "not a folder"


def test_gpu_asked_without_gpu_is_refused(tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = write_spec(tmp_path, resources={"cpu": 1, "gpu": 0.5})
    assert launch(spec, tmp_path / "results") == 2
    assert "resources.gpu" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_a_gpu_sweep_that_ray_cannot_place_stops_at_once_with_exit_2(ray_session, tmp_path, capsys, monkeypatch):
    # torch sees a GPU (patched here) but the local Ray the trials run on has none (ray_session: 0 GPUs), as in a
    # container where Ray's own GPU detection fails: the trials would wait for a GPU forever. The launch runs in a
    # thread only to bound the wait if that regresses.
    import threading

    from orchestrator.plan import resources

    monkeypatch.setattr(resources, "local_gpus", lambda: 1)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = write_spec(tmp_path, resources={"cpu": 1, "gpu": 1})
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.update(rc=launch(spec, tmp_path / "results")), daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the launch is waiting for a GPU that Ray does not have"
    assert result["rc"] == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "resources.gpu" in err and "in Ray" in err and err.count("\n") == 1


@pytest.mark.slow  # a Ray of its own, in its own process
def test_the_local_ray_is_told_the_gpus_torch_sees(tmp_path):
    # A fresh process (no Ray session of this module's): torch is made to report 2 GPUs, which this CPU machine's
    # Ray would never detect by itself; the local Ray must carry them as its GPU resource.
    import subprocess
    import sys

    code = """
from orchestrator.plan import resources
resources.local_gpus = lambda: 2
from orchestrator.localray.start import start_ray, stop_ray
session = start_ray(None, "127.0.0.1", False, log=lambda line: None)
print("gpus", session.gpus)
stop_ray(session)
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gpus 2.0" in done.stdout


def test_a_cpu_trial_stays_on_the_cpu_where_torch_sees_a_gpu(ray_session):
    # Ray 2.60 shows a task that asked for no GPU every GPU of the machine; a CPU trial under `device: auto` must
    # still run on the CPU. The worker's torch is made to see a GPU at the seam `auto` reads (is_available).
    from orchestrator.run.trainable import with_gpu_share
    from pixelreg_core.config import TrialConfig

    @ray_session.remote(num_cpus=1, num_gpus=0)
    def device_of(cfg: TrialConfig, fake_gpu: bool) -> tuple[str, str]:
        import torch

        from pixelreg_core.train import resolve_device

        torch.cuda.is_available = lambda: fake_gpu
        return str(resolve_device(cfg.device)), str(resolve_device(with_gpu_share(cfg).device))

    auto = TrialConfig(device="auto")
    assert ray_session.get(device_of.remote(auto, True)) == ("cuda", "cpu")  # torch alone would pick the GPU
    assert ray_session.get(device_of.remote(auto, False)) == ("cpu", "cpu")
    assert with_gpu_share(TrialConfig(device="cpu")).device == "cpu"  # a named device is left as it is


class _Held:
    """Stands for what a failed attempt's frames hold (model, optimizer, graph): it sits in a reference cycle, as
    modules with hooks and autograd graphs do, so only a collection frees it."""

    def __init__(self):
        self.me = self


def _failing_attempt(held: list) -> None:
    model = _Held()  # a local of the failing frame, as train()'s model is
    held.append(weakref.ref(model))
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_retried_trial_starts_without_the_failed_attempts_objects(tmp_path, monkeypatch):
    from orchestrator.run import trainable
    from pixelreg_core import trial
    from pixelreg_core.config import TrialConfig

    held, alive = [], []

    def run_trial(cfg, *args, **kwargs):
        if not held:
            _failing_attempt(held)
        alive.append(held[0]() is not None)
        return {"trial_id": cfg.trial_id, "status": "ok"}

    monkeypatch.setattr(trial, "run_trial", run_trial)
    assert trainable._run(TrialConfig(), str(tmp_path), 1, retries=1)["status"] == "ok"
    assert alive == [False]  # freed before the retry ran


def test_a_sticky_cuda_error_ends_the_worker_instead_of_failing_every_later_trial(tmp_path, monkeypatch):
    from orchestrator.run import trainable
    from pixelreg_core import trial
    from pixelreg_core.config import TrialConfig

    class Ended(BaseException):
        pass

    def end(status):
        raise Ended(status)

    def run_trial(cfg, *args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(trial, "run_trial", run_trial)
    monkeypatch.setattr(trainable.os, "_exit", end)
    with pytest.raises(Ended):
        trainable._run(TrialConfig(), str(tmp_path), 1, retries=2)
    monkeypatch.setattr(trial, "run_trial", lambda cfg, *a, **k: _failing_attempt([]))  # out of memory: retried
    assert trainable._run(TrialConfig(), str(tmp_path), 1, retries=1)["status"] == "failed"


def test_status_of_a_missing_folder_is_a_user_error(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "no such sweep folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ security lines


def test_security_warnings_only_when_auth_off_or_dashboard_exposed():
    assert security_warnings("127.0.0.1", "token", started_here=True) == []
    assert security_warnings("127.0.0.1", None, started_here=True) == []
    [auth] = security_warnings("127.0.0.1", "disabled", started_here=True)
    assert "RAY_AUTH_MODE=disabled" in auth
    [bind] = security_warnings("0.0.0.0", "token", started_here=True)
    assert "0.0.0.0" in bind
    assert "ray get-auth-token" in " ".join(access_lines("127.0.0.1:8265", "token"))
    assert "ray get-auth-token" not in " ".join(access_lines("127.0.0.1:8265", "disabled"))
