"""Experiment trackers through Tune's own callbacks (orchestrator.run.track): one tiny launch (slow tier) logs to W&B
in offline mode and to a local MLflow store (sqlite, the one MLflow recommends), and each library's own data is read
back for every trial: the .wandb run files' records (W&B's protobuf Record, in the file's LevelDB-log framing) and
MLflow's `MlflowClient`. Per trial: its fields as the run's config / params, each epoch's metrics equal to the epochs
table, its final figures equal to the trials and robustness tables, the seeds of a setting grouped; TensorBoard's
HParams data in Tune's event files; and no credential anywhere in the sweep folder, the MLflow store or the launch's
output. The spec's checks (fast tier) need no launch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import local_ray, write_spec

from orchestrator import cli

# Fake credentials in the environment of the launch (and of Ray's workers and W&B's logging actors); none may be
# written anywhere. W&B checks nothing in offline mode.
SECRETS = {"WANDB_API_KEY": "pixelregtestsecret" + "0" * 22, "MLFLOW_TRACKING_TOKEN": "pixelreg-mlflow-secret-token",
           "MLFLOW_TRACKING_PASSWORD": "pixelreg-mlflow-secret-password"}


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One tiny launch (2 seeds x (1 point + baseline), 2 epochs) with both trackers on; returns its folders and
    output."""
    tmp = tmp_path_factory.mktemp("track")
    with pytest.MonkeyPatch.context() as env:
        for name, value in SECRETS.items():
            env.setenv(name, value)
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # W&B's own files: not in $HOME
            env.setenv(name, str(tmp / "wandb-home"))
        env.setenv("WANDB_SILENT", "true")
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        store = f"sqlite:///{tmp / 'mlflow.db'}"
        spec = write_spec(tmp, name="tracked", train={"width": 4, "epochs": 2, "train_images": 100,
                                                      "test_images": 40, "reg_images": 40, "batch_size": 32,
                                                      "num_threads": 1},
                          track={"wandb": {"project": "pixelreg-test", "mode": "offline"},
                                 "mlflow": {"tracking_uri": store}})
        root = tmp / "results"
        with local_ray():
            import contextlib
            import io

            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = cli.main(["launch", str(spec), "--results", str(root), "--progress-every", "5"])
        yield {"rc": rc, "sweep": root / "tracked", "store": store, "db": tmp / "mlflow.db",
               "output": out.getvalue() + err.getvalue()}


def wandb_records(path: Path):
    """The records of a .wandb file: a 7-byte header (':W&B', magic, version), then LevelDB-log framing (32 KiB
    blocks; each record piece: crc32c, length, type FULL 1 / FIRST 2 / MIDDLE 3 / LAST 4) around W&B's protobuf
    `Record`s."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a piece header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run(path: Path) -> dict:
    """One offline run read back: its group, its config (after every update), each logged step, its summary."""
    run = {"config": {}, "history": [], "summary": {}}

    def items(update) -> dict:
        return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in update}

    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["group"], run["project"] = record.run.run_group, record.run.project
            run["config"].update(items(record.run.config.update))
        elif kind == "config":
            run["config"].update(items(record.config.update))
        elif kind == "history":
            run["history"].append(items(record.history.item))
        elif kind == "summary":
            run["summary"].update(items(record.summary.update))
    return run


# the epochs table's metrics each tracker must show per epoch
EPOCH_METRICS = ("loss_cls", "loss_sim", "train_acc", "valid_loss", "valid_acc", "test_acc")


def expected(sweep: Path):
    trials = pd.read_parquet(sweep / "trials").set_index("trial_id")
    epochs = pd.read_parquet(sweep / "epochs")
    robustness = pd.read_parquet(sweep / "robustness")
    top = robustness[robustness["eps"] == robustness["eps"].max()].groupby("trial_id")["value"].mean()
    return trials, epochs, top


@pytest.mark.slow
def test_the_launch_ran_with_both_trackers(launched):
    assert launched["rc"] == 0, launched["output"][-2000:]
    assert "trackers: wandb, mlflow" in launched["output"]


@pytest.mark.slow
def test_wandb_offline_runs_hold_each_trials_fields_epochs_and_figures(launched):
    trials, epochs, top = expected(launched["sweep"])
    files = sorted(launched["sweep"].glob("tune/*/*/wandb/offline-run-*/run-*.wandb"))
    runs = {run["config"]["trial_id"]: run for run in map(wandb_run, files)}
    for path, run in zip(files, map(wandb_run, files), strict=True):  # written where its config says
        assert Path(run["config"]["trial_log_path"]) == path.parents[2], path
    assert sorted(runs) == sorted(trials.index)  # one run per trial, named by the pixelreg trial id
    for trial_id, run in runs.items():
        row = trials.loc[trial_id]
        assert run["project"] == "pixelreg-test"
        assert {k: run["config"][k] for k in ("role", "task", "reg_data", "seed")} == \
            {k: row[k] for k in ("role", "task", "reg_data", "seed")}
        assert (run["config"]["th"], run["config"]["alpha"]) == (row["th"], row["alpha"])
        logged = [step for step in run["history"] if "epoch" in step]
        mine = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")
        assert [step["epoch"] for step in logged] == [1, 2]
        for metric in EPOCH_METRICS:
            if mine[metric].isna().all():  # loss_sim of a baseline: not reported
                assert all(metric not in step for step in logged), metric
            else:
                assert [step[metric] for step in logged] == mine[metric].tolist(), metric
        for name in ("clean_acc", "valid_acc", "best_epoch"):
            assert run["summary"][name] == row[name], name
        assert run["summary"]["ok"] == 1
        assert run["summary"]["robust/gaussian/accuracy"] == pytest.approx(top[trial_id], abs=1e-12)
    groups = {(run["config"]["role"], run["config"]["seed"]): run["group"] for run in runs.values()}
    assert groups[("trial", 0)] == groups[("trial", 1)] and groups[("baseline", 0)] == groups[("baseline", 1)]
    assert groups[("trial", 0)] != groups[("baseline", 0)]


@pytest.mark.slow
def test_mlflow_runs_hold_each_trials_params_epochs_and_figures(launched):
    from mlflow.tracking import MlflowClient

    trials, epochs, top = expected(launched["sweep"])
    client = MlflowClient(tracking_uri=launched["store"])
    experiment = client.get_experiment_by_name("tracked")  # the sweep's name by default
    runs = {run.data.params["trial_id"]: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(trials.index)
    for trial_id, run in runs.items():
        row = trials.loc[trial_id]
        params = run.data.params  # MLflow keeps params as strings
        assert (params["role"], params["task"], params["seed"]) == (row["role"], row["task"], str(row["seed"]))
        assert float(params["th"]) == row["th"] and float(params["alpha"]) == row["alpha"]
        mine = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")
        for metric in EPOCH_METRICS:
            history = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)
            if mine[metric].isna().all():  # loss_sim of a baseline: not reported
                assert history == [], metric
                continue
            # the step after the last epoch is the final report: valid_acc there is the kept model's
            per_epoch = [(m.step, m.value) for m in history if m.step <= len(mine)]
            assert per_epoch == list(zip(mine["epoch"], mine[metric], strict=True)), metric
        for name in ("clean_acc", "valid_acc", "best_epoch"):
            assert run.data.metrics[name] == row[name], name
        assert run.data.metrics["robust/gaussian/accuracy"] == pytest.approx(top[trial_id], abs=1e-12)
        assert run.data.tags["sweep"] == "tracked" and run.info.status == "FINISHED"
    settings = {(r.data.params["role"], r.data.params["seed"]): r.data.tags["setting"] for r in runs.values()}
    assert settings[("trial", "0")] == settings[("trial", "1")] != settings[("baseline", "0")]


def tensorboard_events(path: Path):
    """The Events of a TensorBoard event file: TFRecord framing (length, its masked crc, data, data's masked crc)
    around TensorBoard's `Event` protobuf (tensorboardX's copy of it)."""
    from tensorboardX.proto import event_pb2

    data, pos = path.read_bytes(), 0
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 8], "little")
        event = event_pb2.Event()
        event.ParseFromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        yield event


def tensorboard_run(folder: Path) -> dict:
    """What TensorBoard's SCALARS and HPARAMS views read from one trial's folder: the scalars per tag and step,
    the trial's hparams (session start) and the metric names of its experiment summary."""
    from tensorboardX.proto import plugin_hparams_pb2

    run = {"scalars": {}, "hparams": {}, "metrics": []}
    for path in sorted(folder.glob("events.out.tfevents*")):
        for event in tensorboard_events(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    plugin = plugin_hparams_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    if plugin.HasField("session_start_info"):
                        for name, hp in plugin.session_start_info.hparams.items():
                            run["hparams"][name] = hp.WhichOneof("kind") and getattr(hp, hp.WhichOneof("kind"))
                    if plugin.HasField("experiment"):
                        run["metrics"] = [m.name.tag for m in plugin.experiment.metric_infos]
                elif value.HasField("simple_value"):
                    run["scalars"].setdefault(value.tag, {})[event.step] = value.simple_value
    return run


@pytest.mark.slow
def test_tensorboard_hparams_list_each_trials_fields_and_final_figures(launched):
    """TensorBoard (Tune's own TBX logger, no spec section): HPARAMS has each trial's fields and, as metrics, its
    final figures, each with a scalar of that tag to show; SCALARS has every epoch's metrics."""
    trials, epochs, top = expected(launched["sweep"])
    folders = {Path(p).parent for p in launched["sweep"].glob("tune/*/*/events.out.tfevents*")}
    runs = {run["hparams"]["trial_id"]: run for run in map(tensorboard_run, folders)}
    assert sorted(runs) == sorted(trials.index)
    for trial_id, run in runs.items():
        row = trials.loc[trial_id]
        hparams = run["hparams"]
        assert (hparams["role"], hparams["task"], hparams["reg_data"]) == (row["role"], row["task"], row["reg_data"])
        assert (hparams["th"], hparams["alpha"], hparams["seed"]) == (row["th"], row["alpha"], row["seed"])
        assert hparams["setting"].startswith(row["role"])
        wanted = {f"ray/tune/{name}" for name in ("clean_acc", "valid_acc", "best_epoch", "robust/gaussian/accuracy")}
        assert wanted <= set(run["metrics"]), run["metrics"]
        for tag in wanted:  # a metric column shows the value of the scalar of that tag at its last step
            assert run["scalars"].get(tag), tag
        last = max(run["scalars"]["ray/tune/clean_acc"])
        assert run["scalars"]["ray/tune/clean_acc"][last] == pytest.approx(row["clean_acc"], abs=1e-6)  # float32
        mine = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")
        assert [run["scalars"]["ray/tune/test_acc"][step] for step in (1, 2)] == \
            pytest.approx(mine["test_acc"].tolist(), abs=1e-6)


@pytest.mark.slow
def test_no_credential_lands_in_the_sweep_folder_or_the_output(launched):
    files = [p for p in launched["sweep"].rglob("*") if p.is_file()] + [launched["db"]]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "params.json" for p in files)
    for secret in SECRETS.values():
        assert secret not in launched["output"]
        for path in files:
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("track, expected", [
    ({"mlflow": {"tracking_uri": "https://me:hunter2@mlflow.example.org"}},
     "track.mlflow.tracking_uri: holds a user name or password, and the spec is recorded in the sweep folder"),
    ({"wandb": {"project": "p", "api_key": "x"}},
     "track.wandb.api_key: unknown key; allowed keys: project, entity, mode"),
    ({"wandb": {"mode": "sometimes"}}, "track.wandb.mode: 'sometimes' is not a W&B mode; use one of online, offline"),
    ({"mlflow": {"tracking_uri": "mlruns"}}, "track.mlflow.tracking_uri: 'mlruns' is a folder, MLflow's file store, "
     "which MLflow 3 keeps in maintenance and refuses; use a database such as sqlite:///mlflow.db"),
])
def test_credentials_have_no_place_in_a_spec(track, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    spec = write_spec(tmp_path, track=track)
    assert cli.main(["validate", str(spec)]) == 2
    assert expected in capsys.readouterr().err


def test_a_tracker_without_its_client_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    spec = write_spec(tmp_path, track={"wandb": {"mode": "offline"}})
    assert cli.main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("track.wandb: needs the wandb client, which is not installed; pip install 'pixelreg[track]' "
                        "(or pip install wandb)"), err
    assert "\n" not in err
    assert yaml.safe_load(spec.read_text())["track"] == {"wandb": {"mode": "offline"}}


def test_a_folder_store_is_taken_where_mlflow_is_told_to_allow_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    spec = write_spec(tmp_path, track={"mlflow": {"tracking_uri": "mlruns"}})
    assert cli.main(["validate", str(spec)]) == 0, capsys.readouterr().err


def test_wandb_offline_needs_no_api_key(tmp_path, monkeypatch):
    """Tune's W&B callback asks for a key unless WANDB_MODE says offline; the spec's `mode: offline` is enough."""
    from orchestrator.run.track import tracker_callbacks
    from orchestrator.spec.track import Track

    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # no login file of the machine's user
        monkeypatch.setenv(name, str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    (callback,) = tracker_callbacks(Track(wandb={"mode": "offline"}), "sweep")
    callback.setup()
    assert "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ
    (online,) = tracker_callbacks(Track(wandb={"mode": "online"}), "sweep")
    with pytest.raises(ValueError, match="No WandB API key found"):
        online.setup()


def test_the_launch_says_where_each_tracker_writes():
    from orchestrator.run.track import tracker_callbacks, trackers_line
    from orchestrator.spec.track import Track

    track = Track(wandb={"mode": "offline", "project": "p"}, mlflow={"tracking_uri": "sqlite:///m.db"})
    assert trackers_line(tracker_callbacks(track, "sweep")) == (
        "trackers: wandb, mlflow: one run per Tune trial, a setting's seeds grouped; W&B project p (each trial's "
        "folder under tune/); MLflow experiment sweep at sqlite:///m.db")
