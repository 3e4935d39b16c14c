"""GPU-first figures: step time per kernel option, epoch and trial times, packed-sweep throughput, sweep wall times.

    python benchmarks/gpu.py [--out FILE.json] [--parts abcd] [--smoke] [--mps]

(a) step time and images/s of one training step, plain and regularized, with each kernel option (amp,
    channels_last, fused_sgd, cudnn_benchmark, compile) on alone, all on, and all off; on CPU also the issue's
    target, the regularized step of 64 images + 16 pairs, 28x28, width 64, 2 threads (today's 0.76 s).
(b) epoch time on MNIST- and CIFAR-10-shaped data (synthetic uint8 images: the timing does not depend on pixel
    values) with the sweeps' settings, plus the evaluation of the sweeps' attack set (boundary steps timed at a
    reduced count and scaled), and the extrapolated 20-epoch MNIST and 40-epoch CIFAR-10 trial.
(c) throughput of a 28-trial MNIST-shaped sweep (synthetic IDX files, real `orchestrator launch`, Ray fractional
    GPUs) at 1, 2, 4, 8, 16 trials per GPU (with --mps also under CUDA MPS), with GPU utilisation and memory per
    trial (pynvml or nvidia-smi; "n/a" without them).
(d) extrapolated wall time of sweeps/mnist_grid.yaml and sweeps/cifar10_paper.yaml on this device, from (a)-(c).

Timing follows the usual GPU rules: warm-up steps first, device synchronisation before every clock read, many
steps per figure. --smoke runs every part at a tiny size on a CPU-only machine in about a minute (concurrency 1 and
2 only), so CI keeps this script working; its figures mean nothing. Without --smoke on CUDA, run the parts in
separate calls where a call has a time limit (e.g. --parts ab, then --parts c).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pixelreg_core import attacks  # noqa: E402
from pixelreg_core.config import KERNEL_FIELDS, TrialConfig  # noqa: E402
from pixelreg_core.data.bundle import DataBundle  # noqa: E402
from pixelreg_core.model import build_model, save_checkpoint  # noqa: E402
from pixelreg_core.targets.registry import build_target  # noqa: E402
from pixelreg_core.train import (  # noqa: E402
    PlacedData,
    batch_starts,
    compiled_step,
    evaluate_split,
    kernel_settings,
    make_optimizer,
    resolve_device,
    train_epoch,
    uses_channels_last,
)

CPU_TARGET_S = 0.76  # issue 8: today's regularized step on the 2-core development machine
CUDA_ONLY = ("channels_last", "cudnn_benchmark")
SHAPES = {"MNIST": dict(channels=1, size=28, train=59400, test=10000, augment=False, scale=1.0, shift=0.0,
                        sweep="mnist_grid.yaml"),
          "CIFAR10": dict(channels=1, size=32, train=49500, test=10000, augment=True, scale=5.0, shift=0.5,
                          sweep="cifar10_paper.yaml")}


# ----------------------------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_facts(device: torch.device) -> dict[str, Any]:
    facts = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
             "python": platform.python_version(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
             "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                     driver=_smi(["--query-gpu=driver_version", "--format=csv,noheader"]))
    else:
        facts["name"] = _cpu_name()
    return facts


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def _smi(query: list[str]) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", *query], capture_output=True, text=True)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def synthetic(shape: dict[str, Any], n_train: int, n_test: int, n_reg: int, seed: int = 0) -> DataBundle:
    """uint8-valued images (k / 255, as the real loaders give) of the dataset's shape, random labels."""
    g = torch.Generator().manual_seed(seed)
    dims = (shape["channels"], shape["size"], shape["size"])

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, *dims), generator=g, dtype=torch.uint8).float().div_(255.0)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, 10, (n,), generator=g)

    n_valid = max(1, n_train // 99)
    return DataBundle(images(n_train), labels(n_train), images(n_valid), labels(n_valid), images(n_test),
                      labels(n_test), images(n_reg), torch.full((n_reg,), -1), num_classes=10,
                      input_scale=shape["scale"], input_shift=shape["shift"], augment=shape["augment"])


class Stepper:
    """One trial's model, target, optimizer and compiled step, built as train.train builds them."""

    def __init__(self, cfg: TrialConfig, data: DataBundle, device: torch.device):
        self.cfg, self.device, self.data = cfg, device, data
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, data.in_channels, data.num_classes, data.input_scale,
                                 data.input_shift).to(device)
        self.target = build_target(cfg, data.reg_x.to(device), data.reg_y.to(device)) if cfg.regularized else None
        self.channels_last = uses_channels_last(cfg, device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(cfg, self.model, device)
        self.step_fn = compiled_step(cfg)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)

    def placed(self, n_images: int) -> PlacedData:
        data = self.data
        part = dataclasses.replace(data, train_x=data.train_x[:n_images], train_y=data.train_y[:n_images])
        return PlacedData.of(part, data.reg_x, self.device)

    def seconds_per_step(self, steps: int, warmup: int) -> float:
        """Median over timed runs of one step; each run is `train_epoch` over `steps` batches + its one read."""
        batch = self.cfg.batch_size
        timed, warm = self.placed(steps * batch), self.placed(max(1, warmup) * batch)
        with kernel_settings(self.cfg, self.device):
            self.model.train()
            self._epoch(warm)
            runs = []
            for _ in range(3 if 8 <= steps <= 200 else 1):  # a whole epoch is its own average
                sync(self.device)
                started = time.perf_counter()
                self._epoch(timed)
                sync(self.device)
                runs.append((time.perf_counter() - started) / len(batch_starts(steps * batch, batch)))
        return statistics.median(runs)

    def _epoch(self, placed: PlacedData) -> None:
        per_step, _ = train_epoch(self.cfg, placed, self.data.augment, self.model, self.target, self.optimizer,
                                  self.step_fn, self.generator, self.channels_last)
        torch.stack(per_step).tolist()  # the epoch's one host read, as in train.train

    def seconds_per_evaluation(self, x: torch.Tensor, y: torch.Tensor) -> float:
        x, y = x.to(self.device), y.to(self.device)
        evaluate_split(self.model, x[:512], y[:512], amp=self.cfg.amp)  # warm-up
        sync(self.device)
        started = time.perf_counter()
        evaluate_split(self.model, x, y, amp=self.cfg.amp)
        sync(self.device)
        return time.perf_counter() - started


def sweep_train(name: str) -> dict[str, Any]:
    from orchestrator.spec.load import load_spec

    return dict(load_spec(ROOT / "sweeps" / name).train)


# ----------------------------------------------------------------------------------------------------- (a)
def part_a(device: torch.device, smoke: bool) -> dict[str, Any]:
    shape = SHAPES["MNIST"]
    width = 4 if smoke else 64
    steps, warmup = (2, 1) if smoke else ((50, 10) if device.type == "cuda" else (5, 1))
    base = dict(task="MNIST", reg_data="MNIST", width=width, batch_size=64, reg_pairs=16,
                reg_images=200 if smoke else 5000, th=0.2, device=device.type)
    data = synthetic(shape, steps * 64, 64, base["reg_images"])
    variants: dict[str, dict[str, Any]] = {"plain": {}}
    for name in KERNEL_FIELDS:
        variants[name] = {name: "default" if name == "compile" else True}
    variants["all"] = {name: ("default" if name == "compile" else True) for name in KERNEL_FIELDS}
    rows = []
    for regularized in (False, True):
        plain_s = None
        for variant, options in variants.items():
            row: dict[str, Any] = {"regularized": regularized, "variant": variant}
            skip = _skip_reason(variant, options, device, smoke)
            if skip:
                rows.append({**row, "step_s": None, "images_per_s": None, "speedup": None, "note": skip})
                continue
            cfg = TrialConfig(**base, alpha=4.0 if regularized else 0.0, **options)
            try:
                seconds = Stepper(cfg, data, device).seconds_per_step(steps, warmup)
            except Exception as exc:  # a kernel option this torch/device cannot run: say so, keep going
                rows.append({**row, "step_s": None, "images_per_s": None, "speedup": None,
                             "note": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
                continue
            plain_s = seconds if variant == "plain" else plain_s
            rows.append({**row, "step_s": seconds, "images_per_s": cfg.batch_size / seconds,
                         "speedup": plain_s / seconds if plain_s else None, "note": ""})
        torch.cuda.empty_cache() if device.type == "cuda" else None
    out: dict[str, Any] = {"config": {"width": width, "batch_size": 64, "reg_pairs": 16, "image": "1x28x28",
                                      "steps_timed": steps, "warmup_steps": warmup}, "rows": rows}
    if device.type == "cpu":
        reg_plain = next(r for r in rows if r["regularized"] and r["variant"] == "plain")
        target_config = not smoke and torch.get_num_threads() == 2
        out["cpu_target"] = {"step_s": reg_plain["step_s"], "target_s": CPU_TARGET_S, "target_config": target_config,
                             "ok": (reg_plain["step_s"] <= CPU_TARGET_S) if target_config else None,
                             "note": "" if target_config else "not the target configuration (needs width 64, "
                                                              "--threads 2, no --smoke)"}
    return out


def _skip_reason(variant: str, options: dict[str, Any], device: torch.device, smoke: bool) -> str:
    if device.type != "cuda" and variant in CUDA_ONLY:
        return "n/a: acts on CUDA only"
    if "compile" in options and smoke:
        return "skipped in --smoke: compiling takes minutes on a CPU"
    return ""


# ----------------------------------------------------------------------------------------------------- (b)
def part_b(device: torch.device, smoke: bool, kernels: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for task, shape in SHAPES.items():
        train = sweep_train(shape["sweep"])
        fields = {k: v for k, v in train.items() if k in ("arch", "width", "batch_size", "reg_pairs", "reg_images",
                                                          "epochs", "grayscale")}
        if smoke:
            fields.update(width=4, reg_images=200)
        base = dict(task=task, reg_data=task, th=0.8, device=device.type, **kernels, **fields)
        cfg = TrialConfig(**base, alpha=10.0)
        steps_per_epoch = len(batch_starts(shape["train"], cfg.batch_size))
        timed = 2 if smoke else (steps_per_epoch if device.type == "cuda" else 5)
        n_test = 64 if smoke else shape["test"]
        data = synthetic(shape, timed * cfg.batch_size, n_test, cfg.reg_images)
        figures = {}
        for label, alpha in (("regularized", cfg.alpha), ("baseline", 0.0)):
            stepper = Stepper(TrialConfig(**base, alpha=alpha), data, device)
            step_s = stepper.seconds_per_step(timed, 1 if smoke else 10)
            eval_s = stepper.seconds_per_evaluation(data.test_x, data.test_y) * shape["test"] / n_test
            eval_s += eval_s * (shape["train"] // 99) / shape["test"]  # the validation split
            epoch_s = step_s * steps_per_epoch + eval_s
            figures[label] = {"step_s": step_s, "steps_per_epoch": steps_per_epoch, "steps_timed": timed,
                              "eval_s": eval_s, "epoch_s": epoch_s}
        attack_s, attack_notes = time_attacks(TrialConfig(**base, alpha=0.0), data, device, smoke)
        epochs = cfg.epochs
        for label in figures:
            figures[label]["attacks_s"] = attack_s
            figures[label]["trial_s"] = epochs * figures[label]["epoch_s"] + attack_s
        out[task] = {"epochs": epochs, "width": cfg.width, "image": f"{shape['channels']}x{shape['size']}x"
                     f"{shape['size']}", "train_images": shape["train"], **figures, "attacks": attack_notes}
    return out


def time_attacks(cfg: TrialConfig, data: DataBundle, device: torch.device, smoke: bool
                 ) -> tuple[float, dict[str, Any]]:
    """Seconds for the sweeps' attack set (the paper preset) on one trained model, attack by attack.

    Boundary runs at a reduced step count and is scaled linearly to the preset's (its cost is steps x images);
    image counts beyond the synthetic test set are scaled the same way. The test labels are replaced by the
    untrained model's own predictions, so that every image counts as correctly classified and the attacks that
    pick correct images work on as many as a trained model would give them. On a CPU without --smoke only the
    noise attacks are timed (the paper's 25,000-step boundary attack takes hours there)."""
    preset = attacks.attack_preset("paper")
    notes: dict[str, Any] = {}
    total = 0.0
    n_test = len(data.test_y)
    with tempfile.TemporaryDirectory() as tmp:
        source_cfg = cfg.replace(alpha=0.0, seed=1000, role="fgsm_source")
        source_path = os.path.join(tmp, "source.pt")
        torch.manual_seed(1000)
        save_checkpoint(build_model(source_cfg, data.in_channels, 10, data.input_scale, data.input_shift),
                        source_cfg, source_path)
        model = Stepper(cfg, data, device).model.eval()
        with torch.no_grad():
            own = torch.cat([model(x.to(device)).argmax(1).cpu() for x in data.test_x.split(500)])
        data = dataclasses.replace(data, test_y=own)
        for name in preset:
            opts = attacks.resolve(name, preset[name])
            if device.type == "cpu" and not smoke and name in ("boundary", "fgsm_transfer"):
                notes[name] = "not timed on CPU"
                continue
            run_opts: dict[str, Any] = {"preset": "paper"}
            images = opts.get("images")
            cap = 16 if smoke else n_test
            factor = 1.0
            if images is not None and images > cap:
                run_opts["images"] = cap
                factor = images / cap
            run_cfg = cfg.replace(fgsm_source=source_path)

            def timed(options: dict[str, Any], run_cfg: TrialConfig = run_cfg, name: str = name) -> float:
                sync(device)
                started = time.perf_counter()
                attacks.evaluate(model, data, run_cfg.replace(attacks={name: options}), None)
                sync(device)
                return time.perf_counter() - started

            if name == "boundary":
                # cost = a fixed part (starting points, binary search) + a part per step: two step counts fit both
                s1, s2 = (1, 3) if smoke else (100, 300)
                t1, t2 = timed({**run_opts, "steps": s1, "repeats": 1}), timed({**run_opts, "steps": s2, "repeats": 1})
                per_step = max(0.0, (t2 - t1) / (s2 - s1))
                one = max(t1 - per_step * s1, 0.0) + per_step * opts["steps"]
                seconds = one * opts["repeats"] * factor
                notes[name] = {"measured_s": [t1, t2], "at_steps": [s1, s2], "per_step_s": per_step,
                               "images_scale": factor, "repeats": opts["repeats"], "steps": opts["steps"],
                               "seconds": seconds}
            else:
                measured = timed(run_opts)
                seconds = measured * factor
                notes[name] = {"measured_s": measured, "images_scale": factor, "seconds": seconds}
            total += seconds
    return total, notes


# ----------------------------------------------------------------------------------------------------- (c)
def write_idx(folder: Path, n_train: int, n_test: int) -> None:
    """MNIST-format IDX files of random 28x28 images and labels (the real loader reads them)."""
    g = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8).numpy()
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8).numpy()
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28)) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
            fh.write(bytes([0, 0, 0x08, 1]) + n.to_bytes(4, "big") + labels.tobytes())


class GpuSampler:
    """GPU utilisation and memory in use, sampled every 0.5 s in a thread (pynvml, else nvidia-smi)."""

    def __init__(self) -> None:
        self.util: list[float] = []
        self.mem_mib: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.source = None
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._read = lambda: (pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                                  pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)
            self.source = "pynvml"
        except Exception:
            if _smi(["--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]):
                self._read = self._read_smi
                self.source = "nvidia-smi"

    @staticmethod
    def _read_smi() -> tuple[float, float]:
        util, mem = _smi(["--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]).split(",")
        return float(util), float(mem)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(Exception):
                util, mem = self._read()
                self.util.append(util)
                self.mem_mib.append(mem)

    def __enter__(self) -> GpuSampler:
        if self.source:
            self.idle_mem = self._read()[1]
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.source:
            self._thread.join()


def part_c(device: torch.device, smoke: bool, levels: list[int], mps: bool, train_images: int,
           kernels: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd
    import yaml

    gpu = device.type == "cuda"
    cpus = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="pixelreg-bench-") as tmp:
        folder = Path(tmp) / "mnist-shaped"
        write_idx(folder, 300 if smoke else 60000, 100 if smoke else 10000)
        pair = {"task": f"idx:{folder}", "reg_data": f"idx:{folder}"}
        grid, seeds = ({"th": [0.2], "alpha": [4]}, 2) if smoke else ({"th": [0.2, 0.4, 0.6], "alpha": [1, 4]}, 4)
        train = {"width": 4 if smoke else 64, "epochs": 1, "train_images": 200 if smoke else train_images,
                 "test_images": 50 if smoke else 1000, "reg_images": 100 if smoke else 5000, "batch_size": 64,
                 **{k: v for k, v in kernels.items() if v not in (False, "none")}}
        for mode in (("plain", "mps") if mps else ("plain",)):
            for level in levels:
                threads = max(1, cpus // level)
                spec = {"name": f"bench-{mode}-{level}", "pairs": [pair], "grid": grid, "seeds": seeds,
                        "baseline": True, "train": {**train, "num_threads": threads},
                        "attacks": {"gaussian": {"images": 50 if smoke else 1000, "num_eps": 3}},
                        "resources": {"cpu": threads, "gpu": round(1.0 / level, 4) if gpu else 0},
                        "max_failures": 0}
                path = Path(tmp) / f"{spec['name']}.yaml"
                path.write_text(yaml.safe_dump(spec))
                results = Path(tmp) / "results"
                cmd = [sys.executable, "-m", "orchestrator.cli", "launch", str(path), "--results", str(results),
                       "--no-dashboard", "--max-concurrent", str(level), "--progress-every", "60"]
                cmd += ["--mps"] if mode == "mps" else []
                env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
                with GpuSampler() if gpu else contextlib.nullcontext() as sampler:
                    started = time.perf_counter()
                    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
                    wall = time.perf_counter() - started
                trials = pd.read_parquet(results / spec["name"] / "trials") if done.returncode == 0 else None
                ok = int((trials["status"] == "ok").sum()) if trials is not None else 0
                row = {"mode": mode, "trials_per_gpu": level, "trials": ok, "wall_s": wall,
                       "trials_per_hour": ok / wall * 3600 if ok else None,
                       "mean_trial_s": float(trials["wall_s"].mean()) if ok else None,
                       "gpu_util_pct": "n/a", "memory_per_trial_mib": "n/a",
                       "error": None if done.returncode == 0 else (done.stderr or done.stdout).strip()[-300:]}
                if sampler is not None and sampler.source and sampler.util:
                    row["gpu_util_pct"] = statistics.mean(sampler.util)
                    row["memory_per_trial_mib"] = (max(sampler.mem_mib) - sampler.idle_mem) / level
                rows.append(row)
    base = next((r["trials_per_hour"] for r in rows if r["trials_per_gpu"] == levels[0] and r["trials_per_hour"]),
                None)
    for row in rows:
        row["speedup"] = row["trials_per_hour"] / base if base and row["trials_per_hour"] else None
    return {"sweep": {"trials": 4 if smoke else 28, "shape": "1x28x28", **train}, "rows": rows}


# ----------------------------------------------------------------------------------------------------- (d)
def part_d(b: dict[str, Any], c: dict[str, Any] | None) -> dict[str, Any]:
    """Sweep wall time = the FGSM source alone, then every other trial at the best measured packing speedup."""
    from orchestrator.spec.expand import expand
    from orchestrator.spec.load import load_spec

    speedups = [r for r in (c or {}).get("rows", []) if r.get("speedup")]
    best = max(speedups, key=lambda r: r["speedup"]) if speedups else None
    speedup = best["speedup"] if best else 1.0
    out = {"packing": {"trials_per_gpu": best["trials_per_gpu"] if best else 1, "mode": best["mode"] if best else
                       "plain", "speedup": speedup}}
    for task, shape in SHAPES.items():
        if task not in b:
            continue
        spec = load_spec(ROOT / "sweeps" / shape["sweep"])
        trials = expand(spec, "results/" + spec.name)
        times = {"regularized": b[task]["regularized"]["trial_s"], "baseline": b[task]["baseline"]["trial_s"]}
        sources = sum(1 for t in trials if t.role == "fgsm_source")
        rest = sum(times["baseline" if t.role != "trial" else "regularized"] for t in trials if t.role != "fgsm_source")
        wall = sources * times["baseline"] + rest / speedup
        out[spec.name] = {"trials": len(trials), "trial_s": times, "wall_s": wall, "wall_h": wall / 3600}
    return out


# ----------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--parts", default="abcd", help="which parts to run (default abcd)")
    parser.add_argument("--smoke", action="store_true", help="every part at a tiny size (CI; about a minute)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default 2, the CPU target's; --smoke: 1)")
    parser.add_argument("--levels", default=None, help="trials per GPU in (c), e.g. 1,2,4,8,16 (smoke: 1,2)")
    parser.add_argument("--mps", action="store_true", help="(c) also under CUDA MPS (launch --mps)")
    parser.add_argument("--with", dest="earlier", action="append", default=[], metavar="FILE.json",
                        help="take parts not run now from an earlier --out file (e.g. --parts d --with ab.json "
                             "--with c.json)")
    parser.add_argument("--sweep-train-images", type=int, default=5000,
                        help="(c) train images per benchmark trial (one epoch); trials are cut short so that five "
                             "packing levels fit in minutes")
    for name in KERNEL_FIELDS:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                            help="kernel option for (b)-(d) (default: the TrialConfig default)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or (1 if args.smoke else 2))
    device = resolve_device(args.device)
    kernels = {name: _parse_kernel(name, getattr(args, name)) for name in KERNEL_FIELDS
               if getattr(args, name) is not None}
    levels = [int(v) for v in args.levels.split(",")] if args.levels else ([1, 2] if args.smoke else [1, 2, 4, 8, 16])
    report: dict[str, Any] = {"facts": device_facts(device), "smoke": args.smoke, "kernels": kernels}
    for path in args.earlier:
        earlier = json.loads(Path(path).read_text())
        report.update({k: v for k, v in earlier.items() if k in ("a_step", "b_epoch", "c_sweep")})
    started = time.perf_counter()
    if "a" in args.parts:
        report["a_step"] = part_a(device, args.smoke)
        _print_a(report["a_step"])
    if "b" in args.parts or ("d" in args.parts and "b_epoch" not in report):
        report["b_epoch"] = part_b(device, args.smoke, kernels)
        _print_b(report["b_epoch"])
    if "c" in args.parts:
        report["c_sweep"] = part_c(device, args.smoke, levels, args.mps, args.sweep_train_images, kernels)
        _print_c(report["c_sweep"])
    if "d" in args.parts:
        report["d_extrapolated"] = part_d(report["b_epoch"], report.get("c_sweep"))
        _print_d(report["d_extrapolated"])
    report["seconds"] = time.perf_counter() - started
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.out}")
    return 0


def _parse_kernel(name: str, value: str) -> Any:
    if name == "compile":
        return value
    return value.lower() in ("1", "true", "yes", "on")


def _fmt(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def _print_a(a: dict[str, Any]) -> None:
    print(f"(a) step time, {a['config']}")
    print(f"{'step':12s} {'variant':16s} {'step s':>10s} {'images/s':>10s} {'speedup':>8s}  note")
    for r in a["rows"]:
        print(f"{'regularized' if r['regularized'] else 'plain':12s} {r['variant']:16s} {_fmt(r['step_s']):>10s} "
              f"{_fmt(r['images_per_s'], '.0f'):>10s} {_fmt(r['speedup'], '.2f'):>8s}  {r['note']}")
    if "cpu_target" in a:
        t = a["cpu_target"]
        print(f"CPU target: regularized step {_fmt(t['step_s'])} s vs {t['target_s']} s -> "
              f"{'ok' if t['ok'] else ('MISSED' if t['ok'] is False else 'n/a')} {t['note']}")


def _print_b(b: dict[str, Any]) -> None:
    print("(b) epoch and trial time")
    for task, f in b.items():
        for label in ("regularized", "baseline"):
            r = f[label]
            print(f"{task:8s} {label:12s} step {r['step_s']:.4f} s x {r['steps_per_epoch']} + eval {r['eval_s']:.1f} s "
                  f"= epoch {r['epoch_s']:.1f} s; {f['epochs']} epochs + attacks {r['attacks_s']:.1f} s = trial "
                  f"{r['trial_s'] / 60:.1f} min")


def _print_c(c: dict[str, Any]) -> None:
    print(f"(c) packed sweep of {c['sweep']['trials']} MNIST-shaped trials")
    for r in c["rows"]:
        print(f"{r['mode']:6s} {r['trials_per_gpu']:3d} per GPU: {r['trials']} ok in {r['wall_s']:.1f} s = "
              f"{_fmt(r['trials_per_hour'], '.0f')} trials/h (x{_fmt(r['speedup'], '.2f')}), GPU util "
              f"{_fmt(r['gpu_util_pct'], '.0f')} %, {_fmt(r['memory_per_trial_mib'], '.0f')} MiB per trial"
              f"{'  error: ' + r['error'] if r['error'] else ''}")


def _print_d(d: dict[str, Any]) -> None:
    p = d["packing"]
    print(f"(d) extrapolated sweep wall time at {p['trials_per_gpu']} trials per GPU ({p['mode']}, "
          f"x{p['speedup']:.2f})")
    for name, f in d.items():
        if name != "packing":
            print(f"{name:14s} {f['trials']} trials: {f['wall_h']:.2f} h")


if __name__ == "__main__":
    sys.exit(main())
