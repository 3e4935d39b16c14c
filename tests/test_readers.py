"""Results every query engine reads: pandas, polars and DuckDB give the same answer on a sweep folder's tables, also
after a writer was SIGKILLed mid-write (its temp file lies in .tmp/, outside every table folder), and on the files
`aggregate` compacts. A full disk injected at the write layer leaves no partial file in a table.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pytest
from conftest import config_of, make_results

from pixelreg_core.hooks import faults
from pixelreg_core.results import TMP_DIR, clean_temp, read_table, write_table

REPO = Path(__file__).resolve().parents[1]

# a writer killed after its temp file has its bytes and before the rename, the moment a crash leaves a leftover
KILLED_WRITER = """
import os, signal, sys
import pyarrow.parquet as pq
from pixelreg_core import results
from pixelreg_core.config import TrialConfig

real = pq.write_table
def write_then_die(table, where, **kwargs):
    real(table, where, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
results.pq.write_table = write_then_die
cfg = TrialConfig(sweep="toy", task="MNIST", reg_data="MNIST", th=0.9, alpha=2.0, seed=7, width=4)
results.write_table(sys.argv[1], "robustness", cfg.trial_id, [{**results.key_values(cfg), "attack": "gaussian",
                    "eps": 0.0, "repeat": 0, "metric": "accuracy", "value": 0.5}])
"""


def query_all(robustness: str) -> dict[str, pd.DataFrame]:
    """Mean gaussian accuracy per eps, in each engine, from a table folder or one file."""
    folder = Path(robustness).is_dir()
    pd_rows = pd.read_parquet(robustness)
    by_pandas = (pd_rows[(pd_rows.attack == "gaussian") & (pd_rows.metric == "accuracy")]
                 .groupby("eps", as_index=False)["value"].mean())
    by_polars = (pl.scan_parquet(f"{robustness}/" if folder else robustness)
                 .filter((pl.col("attack") == "gaussian") & (pl.col("metric") == "accuracy"))
                 .group_by("eps").agg(pl.col("value").mean()).sort("eps").collect().to_pandas())
    glob = f"{robustness}/**" if folder else robustness
    by_duckdb = duckdb.sql(f"select eps, avg(value) as value from read_parquet('{glob}') "
                           "where attack = 'gaussian' and metric = 'accuracy' group by eps order by eps").df()
    return {"pandas": by_pandas, "polars": by_polars, "duckdb": by_duckdb}


def assert_same(answers: dict[str, pd.DataFrame]) -> None:
    reference = answers["pandas"].sort_values("eps").reset_index(drop=True)
    assert len(reference) == 3  # the toy sweep's eps 0, 0.25, 0.5
    for engine, frame in answers.items():
        pd.testing.assert_frame_equal(frame.sort_values("eps").reset_index(drop=True)[["eps", "value"]],
                                      reference[["eps", "value"]], check_dtype=False, obj=engine)


def test_pandas_polars_and_duckdb_agree_also_after_a_sigkill_mid_write(toy_sweep: Path) -> None:
    before = query_all(str(toy_sweep / "robustness"))
    assert_same(before)
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(toy_sweep)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    leftovers = list((toy_sweep / TMP_DIR).iterdir())
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # a real, whole-looking temp file ...
    assert all(p.suffix == ".parquet" and not p.name.startswith(".") for p in (toy_sweep / "robustness").iterdir())
    after = query_all(str(toy_sweep / "robustness"))  # ... that no reader of the table sees
    assert_same(after)
    pd.testing.assert_frame_equal(after["duckdb"], before["duckdb"])
    assert clean_temp(toy_sweep) == 1 and not list((toy_sweep / TMP_DIR).iterdir())  # the next launch's cleanup


def test_aggregate_writes_one_compacted_file_per_table_that_every_engine_reads(toy_sweep: Path) -> None:
    from orchestrator.analysis.aggregate import aggregate_sweep

    result = aggregate_sweep(toy_sweep, figures=False)
    assert sorted(Path(p).name for p in result["compact"].values()) == [
        "epochs.parquet", "robustness.parquet", "spectrum.parquet", "trials.parquet"]
    for table, path in result["compact"].items():
        assert len(pd.read_parquet(path)) == len(read_table(toy_sweep, table))
    compact = query_all(result["compact"]["robustness"])
    assert_same(compact)
    pd.testing.assert_frame_equal(compact["duckdb"], query_all(str(toy_sweep / "robustness"))["duckdb"])


def test_a_full_disk_at_the_write_layer_leaves_no_partial_file_and_stays_full(tmp_path: Path, monkeypatch) -> None:
    root = make_results(tmp_path / "sweep", failed=False)
    files = sorted(p.name for p in (root / "robustness").iterdir())
    cfg = config_of("A", 5)
    marks = tmp_path / "marks"
    monkeypatch.setenv(faults.ENV, json.dumps({"dir": str(marks), "faults": [{"trial": cfg.trial_id,
                                                                                "kind": "enospc"}]}))
    row = {"trial_id": cfg.trial_id, "attack": "gaussian", "eps": 0.0, "repeat": 0, "metric": "accuracy", "value": 1}
    with pytest.raises(OSError) as info:
        write_table(root, "robustness", cfg.trial_id, [row])
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(OSError):  # the disk stays full: another trial's write fails too
        write_table(root, "trials", config_of("A", 0).trial_id, [{"trial_id": "x"}])
    assert sorted(p.name for p in (root / "robustness").iterdir()) == files  # nothing partial, nothing replaced
    assert not list((root / TMP_DIR).iterdir())  # the failed temp file is gone as well
    (marks / faults.DISK_FULL_MARKER).unlink()  # space is back
    write_table(root, "robustness", cfg.trial_id, [row])
    assert (root / "robustness" / f"{cfg.trial_id}.parquet").is_file()
