"""GPU-first figures: step time per kernel option, epoch and trial times, packed-sweep throughput, sweep wall times.

    python benchmarks/gpu.py [--out FILE.json] [--parts abcd] [--smoke] [--mps] [--runner ray|processes]

(a) step time and images/s of one training step, plain and regularized, at widths 16 and 64, with each kernel
    option (amp, channels_last, fused_sgd, cudnn_benchmark, tf32, compile default and reduce-overhead) on alone,
    all on, and all off, and for the compile rows the compile time; on CPU also the issue's target, the
    regularized step of 64 images + 16 pairs, 28x28, width 64, 2 threads (0.76 s).
(b) epoch time on MNIST- and CIFAR-10-shaped data (synthetic uint8 images of class templates plus noise, so a model
    learns them) with the sweeps' settings, plus the evaluation of the sweeps' attack set on a model trained a few
    epochs (untrained, every boundary start fails and the attack time comes out low; boundary steps are timed at
    two reduced counts and fitted), and the extrapolated 20-epoch MNIST and 40-epoch CIFAR-10 trial.
(c) throughput of a 28-trial MNIST-shaped sweep (synthetic IDX files) at 1, 4, 8, 16 trials per GPU (with --mps
    also under CUDA MPS): `--runner ray` runs the real `orchestrator launch` (Ray fractional GPUs), `--runner
    processes` the same trials as plain processes, at most N at once (no Ray needed: the GPU check's path). GPU
    utilisation is averaged over the samples taken while some trial was training (pynvml or nvidia-smi; "n/a"
    without them), memory per trial from the peak. A failed trial is counted and named, not fatal; every level
    has a time limit. With the seed pack (`pack`), each level also as one pack of N trials per process ("pack").
(d) extrapolated wall time of sweeps/mnist_grid.yaml and sweeps/cifar10_paper.yaml on this device, from (a)-(c).

Every figure is written to --out as soon as it exists (the JSON is rewritten after each row), so a run stopped by
a time limit keeps what it measured; `--part-budget-s` makes each part skip its remaining rows (marked so) once it
has run that long. Timing follows the usual GPU rules: warm-up steps first, device synchronisation before every
clock read, many steps per figure. --smoke runs every part at a tiny size on a CPU-only machine in a minute or two
(concurrency 1 and 2 only), so CI keeps this script working; its figures mean nothing. Under --mps run part (c) on
its own (--parts c): parts (a) and (b) leave this process holding a CUDA context outside MPS.
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
from pixelreg_core.kernels import (  # noqa: E402
    compile_session,
    compile_toolchain_missing,
    kernel_settings,
    make_optimizer,
    uses_channels_last,
)
from pixelreg_core.model import build_model, save_checkpoint  # noqa: E402
from pixelreg_core.targets.registry import build_target  # noqa: E402
from pixelreg_core.train import (  # noqa: E402
    PlacedData,
    batch_starts,
    compiled_step,
    evaluate_split,
    learning_rate,
    resolve_device,
    train_epoch,
)

CPU_TARGET_S = 0.76  # issue 8: today's regularized step on the 2-core development machine
CUDA_ONLY = ("channels_last", "cudnn_benchmark", "tf32")
SHAPES = {"MNIST": dict(channels=1, size=28, train=59400, test=10000, augment=False, scale=1.0, shift=0.0,
                        sweep="mnist_grid.yaml"),
          "CIFAR10": dict(channels=1, size=32, train=49500, test=10000, augment=True, scale=5.0, shift=0.5,
                          sweep="cifar10_paper.yaml")}
# (c)'s sweep: what sweeps/mnist_grid.yaml trains, cut to one epoch on part of the images
C_GRID = {"th": [0.2, 0.4, 0.6], "alpha": [1.0, 4.0]}
C_SEEDS = 4
C_ROUNDS = [0]  # --c-rounds (0: all 28 trials per level); set once by main


# ----------------------------------------------------------------------------------------------------- helpers
class Report(dict):
    """The figures so far; `save()` rewrites --out whole (temp file + rename), so a run killed by a time limit
    leaves every figure measured before the kill."""

    def __init__(self, path: str | None, **values: Any) -> None:
        super().__init__(**values)
        self.path = Path(path) if path else None

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self, indent=2, default=str))
        os.replace(tmp, self.path)


class Budget:
    """A part's time budget: rows not started in time are recorded as skipped, not silently missing."""

    def __init__(self, seconds: float | None) -> None:
        self.deadline = time.monotonic() + seconds if seconds else None

    def over(self, needs: float = 0.0) -> bool:
        """Whether the budget is used up, or has less than `needs` seconds left (a row that may take that long)."""
        return self.deadline is not None and time.monotonic() + needs > self.deadline

    def left(self, at_most: float) -> float:
        """The seconds left, at most `at_most`: a level's own limit is the budget left (gpu_check.py's margins)."""
        return at_most if self.deadline is None else max(0.0, min(at_most, self.deadline - time.monotonic()))


OVER_BUDGET = "skipped: the part's --part-budget-s was used up"
COMPILE_ROW_S = 60.0  # budget a compile row needs left to start (its compile took 30-90 s in the issue's estimate)


def failure(exc: BaseException) -> str:
    return f"failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_facts(device: torch.device, touch_cuda: bool = True) -> dict[str, Any]:
    """Where the figures come from. With touch_cuda False (part (c) alone, e.g. under MPS) the GPU is described
    through nvidia-smi only, so this process creates no CUDA context."""
    facts = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
             "python": platform.python_version(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
             "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        facts["driver"] = _smi(["--query-gpu=driver_version", "--format=csv,noheader"])
        if touch_cuda:
            props = torch.cuda.get_device_properties(device)
            facts.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1))
        else:
            facts["name"] = _smi(["--query-gpu=name", "--format=csv,noheader"])
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
    try:
        done = subprocess.run(["nvidia-smi", *query], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def synthetic(shape: dict[str, Any], n_train: int, n_test: int, n_reg: int, seed: int = 0) -> DataBundle:
    """uint8-valued images (k / 255, as the real loaders give) of the dataset's shape: half a fixed random
    template per class, half noise, so that a model learns them in an epoch or two and the attacks meet a model
    that classifies (the timing of a step does not depend on pixel values)."""
    g = torch.Generator().manual_seed(seed)
    dims = (shape["channels"], shape["size"], shape["size"])
    templates = torch.rand((10, *dims), generator=g)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 10, (n,), generator=g)
        images = 0.5 * templates[labels] + 0.5 * torch.rand((n, *dims), generator=g)
        return images.mul(255).round_().div_(255.0), labels

    n_valid = max(1, n_train // 99)
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = split(n_train), split(n_valid), split(n_test)
    reg_x, _ = split(n_reg)
    return DataBundle(train_x, train_y, valid_x, valid_y, test_x, test_y, reg_x, torch.full((n_reg,), -1),
                      num_classes=10, input_scale=shape["scale"], input_shift=shape["shift"],
                      augment=shape["augment"])


class Stepper:
    """One trial's model, target, optimizer and compiled step, built as train.train builds them. Use it inside
    `compile_session(cfg)`, as train.train runs: each Stepper then compiles its own step from scratch."""

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
        self.first_epoch_s: float | None = None

    def placed(self, n_images: int) -> PlacedData:
        data = self.data
        part = dataclasses.replace(data, train_x=data.train_x[:n_images], train_y=data.train_y[:n_images])
        return PlacedData.of(part, data.reg_x, self.device)

    def seconds_per_step(self, steps: int, warmup: int) -> float:
        """Median over timed runs of one step; each run is `train_epoch` over `steps` batches + its one read.
        The warm-up epoch's own time is kept (`first_epoch_s`): with `compile` it holds the compile time."""
        batch = self.cfg.batch_size
        timed, warm = self.placed(steps * batch), self.placed(max(1, warmup) * batch)
        with kernel_settings(self.cfg, self.device):
            self.model.train()
            sync(self.device)
            started = time.perf_counter()
            self._epoch(warm)
            sync(self.device)
            self.first_epoch_s = time.perf_counter() - started
            runs = []
            for _ in range(3 if 8 <= steps <= 200 else 1):  # a whole epoch is its own average
                sync(self.device)
                started = time.perf_counter()
                self._epoch(timed)
                sync(self.device)
                runs.append((time.perf_counter() - started) / len(batch_starts(steps * batch, batch)))
        return statistics.median(runs)

    def train_epochs(self, epochs: int, n_images: int) -> None:
        """A few real epochs (the trial's schedule), so that attacks are timed on a model that classifies."""
        placed = self.placed(n_images)
        with kernel_settings(self.cfg, self.device):
            for epoch in range(epochs):
                for group in self.optimizer.param_groups:
                    group["lr"] = learning_rate(self.cfg, epoch)
                self.model.train()
                self._epoch(placed)

    def _epoch(self, placed: PlacedData) -> None:
        per_step, _ = train_epoch(self.cfg, placed, self.data.augment, self.model, self.target, self.optimizer,
                                  self.step_fn, self.generator, self.channels_last)
        torch.stack(per_step).tolist()  # the epoch's one host read, as in train.train

    def seconds_per_evaluation(self, x: torch.Tensor, y: torch.Tensor) -> float:
        x, y = x.to(self.device), y.to(self.device)
        evaluate_split(self.model, x[:512], y[:512])  # warm-up
        sync(self.device)
        started = time.perf_counter()
        evaluate_split(self.model, x, y)
        sync(self.device)
        return time.perf_counter() - started


def sweep_train(name: str) -> dict[str, Any]:
    """A shipped sweep's `train` settings as its YAML writes them: read with pyyaml, not through the spec schema,
    because the GPU machine has no pydantic (part (b) needs only the few numbers it names; a field the YAML leaves
    out takes TrialConfig's default, as the spec would give it)."""
    import yaml

    return dict(yaml.safe_load((ROOT / "sweeps" / name).read_text()).get("train") or {})


# ----------------------------------------------------------------------------------------------------- (a)
def a_variants() -> dict[str, dict[str, Any]]:
    """Each kernel option alone, both compile modes, and everything on (with either compile mode)."""
    bools = [name for name in KERNEL_FIELDS if name != "compile"]
    variants: dict[str, dict[str, Any]] = {"plain": {}}
    variants.update({name: {name: True} for name in bools})
    variants["compile"] = {"compile": "default"}
    variants["compile_reduce_overhead"] = {"compile": "reduce-overhead"}
    variants["all"] = {**{name: True for name in bools}, "compile": "default"}
    variants["all_reduce_overhead"] = {**{name: True for name in bools}, "compile": "reduce-overhead"}
    return variants


def part_a(device: torch.device, smoke: bool, report: Report, widths: list[int], steps: int | None,
           budget: Budget) -> dict[str, Any]:
    shape = SHAPES["MNIST"]
    steps, warmup = (2, 1) if smoke else ((steps or 50, 10) if device.type == "cuda" else (steps or 5, 1))
    reg_images = 200 if smoke else 5000
    data = synthetic(shape, steps * 64, 64, reg_images)
    out: dict[str, Any] = {"config": {"widths": widths, "batch_size": 64, "reg_pairs": 16, "image": "1x28x28",
                                      "steps_timed": steps, "warmup_steps": warmup}, "rows": []}
    report["a_step"] = out
    variants = a_variants()
    # eager rows of every width first, compile rows (tens of seconds of compiling each) last, the regularized
    # step (what the sweeps run) first among them: a part budget that runs out cuts compile rows, not a width
    eager = {k: v for k, v in variants.items() if "compile" not in v}
    compiled = {k: v for k, v in variants.items() if "compile" in v}
    order = [(eager, w, r) for w in widths for r in (False, True)] + [(compiled, w, r) for r in (True, False)
                                                                       for w in widths]
    plain: dict[tuple[int, bool], float] = {}
    for phase, width, regularized in order:
        base = dict(task="MNIST", reg_data="MNIST", width=width, batch_size=64, reg_pairs=16, reg_images=reg_images,
                    th=0.2, device=device.type)
        plain_s = plain.get((width, regularized))
        for variant, options in phase.items():
            row: dict[str, Any] = {"width": width, "regularized": regularized, "variant": variant,
                                   "step_s": None, "images_per_s": None, "speedup": None, "compile_s": None}
            # a compile row is started only with COMPILE_ROW_S left: compiling alone takes 30-90 s on a GPU
            needs = COMPILE_ROW_S if "compile" in options else 0.0
            skip = _skip_reason(variant, options, device, smoke) or (OVER_BUDGET if budget.over(needs) else "")
            if skip:
                out["rows"].append({**row, "note": skip})
                report.save()
                continue
            cfg = TrialConfig(**base, alpha=4.0 if regularized else 0.0, **options)
            try:
                with compile_session(cfg):  # each variant compiles afresh, as each trial does
                    stepper = Stepper(cfg, data, device)
                    seconds = stepper.seconds_per_step(steps, warmup)
            except Exception as exc:  # a kernel option this torch/device cannot run: say so, keep going
                out["rows"].append({**row, "note": failure(exc)})
                report.save()
                continue
            if variant == "plain":
                plain_s = plain[(width, regularized)] = seconds
            compile_s = None
            if "compile" in options:  # the warm-up epoch less what its steps cost once compiled
                compile_s = max(0.0, stepper.first_epoch_s - warmup * seconds)
            out["rows"].append({**row, "step_s": seconds, "images_per_s": cfg.batch_size / seconds,
                                "speedup": plain_s / seconds if plain_s else None, "compile_s": compile_s,
                                "note": ""})
            report.save()
            del stepper
            torch.cuda.empty_cache() if device.type == "cuda" else None
    if device.type == "cpu":
        reg_plain = next((r for r in out["rows"] if r["regularized"] and r["variant"] == "plain"
                          and r["width"] == widths[-1]), None)
        step_s = reg_plain["step_s"] if reg_plain else None
        target_config = not smoke and torch.get_num_threads() == 2 and widths[-1] == 64 and step_s is not None
        out["cpu_target"] = {"step_s": step_s, "target_s": CPU_TARGET_S, "target_config": target_config,
                             "ok": (step_s <= CPU_TARGET_S) if target_config else None,
                             "note": "" if target_config else "not the target configuration (needs width 64, "
                                                              "--threads 2, no --smoke)"}
    report.save()
    return out


def _skip_reason(variant: str, options: dict[str, Any], device: torch.device, smoke: bool) -> str:
    if device.type != "cuda" and variant in CUDA_ONLY:
        return "n/a: acts on CUDA only"
    if "compile" in options and smoke:
        return "skipped in --smoke: compiling takes minutes on a CPU"
    if "compile" in options and device.type == "cuda" and compile_toolchain_missing():
        return f"n/a: {compile_toolchain_missing()}"
    return ""


# ----------------------------------------------------------------------------------------------------- (b)
def part_b(device: torch.device, smoke: bool, kernels: dict[str, Any], report: Report, budget: Budget,
           attack_epochs: int, max_steps: int | None = None, max_test: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    report["b_epoch"] = out
    for task, shape in SHAPES.items():
        if budget.over():
            out[task] = {"error": OVER_BUDGET}
            report.save()
            continue
        try:  # the epoch figures are saved before the attacks are timed: a kill during them keeps the figures
            _part_b_task(task, shape, device, smoke, kernels, attack_epochs, max_steps, max_test, out, report)
        except Exception as exc:  # noqa: BLE001 - one shape failing must not lose the other's figures
            out[task] = {**out.get(task, {}), "error": failure(exc)}
        report.save()
    return out


def _part_b_task(task: str, shape: dict[str, Any], device: torch.device, smoke: bool, kernels: dict[str, Any],
                 attack_epochs: int, max_steps: int | None, max_test: int | None, out: dict[str, Any],
                 report: Report) -> None:
    """out[task]: the shape's step and epoch figures (saved at once), then its attack times and trial times."""
    train = sweep_train(shape["sweep"])
    fields = {k: v for k, v in train.items() if k in ("arch", "width", "batch_size", "reg_pairs", "reg_images",
                                                      "epochs", "grayscale")}
    if smoke:
        fields.update(width=4, reg_images=200)
    base = dict(task=task, reg_data=task, th=0.8, device=device.type, **kernels, **fields)
    cfg = TrialConfig(**base, alpha=10.0)
    steps_per_epoch = len(batch_starts(shape["train"], cfg.batch_size))
    timed = 2 if smoke else min(steps_per_epoch if device.type == "cuda" else 5, max_steps or steps_per_epoch)
    n_test = 64 if smoke else min(shape["test"], max_test or shape["test"])  # figures are scaled to the full set
    data = synthetic(shape, timed * cfg.batch_size, n_test, cfg.reg_images)
    figures: dict[str, Any] = {}
    for label, alpha in (("regularized", cfg.alpha), ("baseline", 0.0)):
        run_cfg = TrialConfig(**base, alpha=alpha)
        with compile_session(run_cfg):
            stepper = Stepper(run_cfg, data, device)
            step_s = stepper.seconds_per_step(timed, 1 if smoke else 10)
            eval_s = stepper.seconds_per_evaluation(data.test_x, data.test_y) * shape["test"] / n_test
        eval_s += eval_s * (shape["train"] // 99) / shape["test"]  # the validation split
        epoch_s = step_s * steps_per_epoch + eval_s
        figures[label] = {"step_s": step_s, "steps_per_epoch": steps_per_epoch, "steps_timed": timed,
                          "eval_s": eval_s, "epoch_s": epoch_s, "first_epoch_s": stepper.first_epoch_s}
    epochs = cfg.epochs
    out[task] = {"epochs": epochs, "width": cfg.width, "image": f"{shape['channels']}x{shape['size']}x{shape['size']}",
                 "train_images": shape["train"], **figures, "attacks": "not timed yet"}
    report.save()
    attack_s, attack_notes = time_attacks(TrialConfig(**base, alpha=0.0), data, device, smoke, attack_epochs)
    for label in figures:
        figures[label]["attacks_s"] = attack_s
        figures[label]["trial_s"] = epochs * figures[label]["epoch_s"] + attack_s
    out[task]["attacks"] = attack_notes


def time_attacks(cfg: TrialConfig, data: DataBundle, device: torch.device, smoke: bool, epochs: int
                 ) -> tuple[float, dict[str, Any]]:
    """Seconds for the sweeps' attack set (the paper preset) on one model trained `epochs` epochs, attack by attack.

    The model is trained first: on an untrained model (one class for every image) the boundary attack's starting
    points fail and it stops early, so its time came out low. The FGSM source is trained the same way. Boundary
    runs at two reduced step counts, fitted and scaled linearly to the preset's (its cost is steps x images);
    image counts beyond the synthetic test set are scaled the same way. On a CPU without --smoke only the noise
    attacks are timed (the paper's 25,000-step boundary attack takes hours there)."""
    preset = attacks.attack_preset("paper")
    notes: dict[str, Any] = {}
    total = 0.0
    n_test = len(data.test_y)
    n_train = len(data.train_x)
    with tempfile.TemporaryDirectory() as tmp:
        source_cfg = cfg.replace(seed=1000).unregularized("fgsm_source")
        source_path = os.path.join(tmp, "source.pt")
        with compile_session(source_cfg):
            source = Stepper(source_cfg, data, device)
            source.train_epochs(epochs, n_train)
        save_checkpoint(source.model.eval(), source_cfg, source_path)
        with compile_session(cfg):
            stepper = Stepper(cfg, data, device)
            stepper.train_epochs(epochs, n_train)
        model = stepper.model.eval()
        _, clean_acc = evaluate_split(model, data.test_x.to(device), data.test_y.to(device))
        notes["trained"] = {"epochs": epochs, "train_images": n_train, "clean_acc": clean_acc}
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

            try:
                if name == "boundary":
                    # cost = a fixed part (starting points, binary search) + a part per step: two counts fit both
                    s1, s2 = (1, 3) if smoke else (100, 300)
                    t1 = timed({**run_opts, "steps": s1, "repeats": 1})
                    t2 = timed({**run_opts, "steps": s2, "repeats": 1})
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
            except Exception as exc:  # noqa: BLE001 - recorded; the other attacks are still timed
                notes[name] = failure(exc)
                continue
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


def visible_gpu(cuda_visible_devices: str | None) -> tuple[str, int | str]:
    """The GPU torch's cuda:0 is, as NVML names it: ("index", i) or ("uuid", "GPU-..."/"MIG-...").
    CUDA_VISIBLE_DEVICES renumbers the GPUs for CUDA only; NVML (and nvidia-smi) count the machine's, so on a
    machine where cuda:0 is physical GPU 3 the sampler must read GPU 3, not NVML's index 0."""
    first = (cuda_visible_devices or "").split(",")[0].strip()
    if first.isdigit():
        return "index", int(first)
    if first.startswith(("GPU-", "MIG-")):
        return "uuid", first
    return "index", 0


class GpuSampler:
    """GPU utilisation and memory in use, sampled every 0.5 s in a thread (pynvml, else nvidia-smi), each sample
    with its wall-clock time, so that the samples taken while trials trained can be picked out afterwards.
    Neither source creates a CUDA context."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []  # (time.time(), util %, MiB used)
        self.idle_mem = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.source = None
        try:
            import pynvml

            pynvml.nvmlInit()
            kind, which = visible_gpu(os.environ.get("CUDA_VISIBLE_DEVICES"))
            handle = (pynvml.nvmlDeviceGetHandleByUUID(which) if kind == "uuid"
                      else pynvml.nvmlDeviceGetHandleByIndex(which))
            self._read = lambda: (pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                                  pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)
            self.source = "pynvml"
        except Exception:
            if _smi(["--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]):
                self._read = self._read_smi
                self.source = "nvidia-smi"

    @staticmethod
    def _read_smi() -> tuple[float, float]:
        which = str(visible_gpu(os.environ.get("CUDA_VISIBLE_DEVICES"))[1])
        util, mem = _smi([f"--id={which}", "--query-gpu=utilization.gpu,memory.used",
                          "--format=csv,noheader,nounits"]).split(",")
        return float(util), float(mem)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(Exception):
                util, mem = self._read()
                self.samples.append((time.time(), util, mem))

    def __enter__(self) -> GpuSampler:
        if self.source:
            self.idle_mem = self._read()[1]
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.source:
            self._thread.join()

    def figures(self, windows: list[tuple[float, float]], level: int) -> dict[str, Any]:
        """Mean utilisation over the samples inside any training window (and over all), memory per trial."""
        if not self.source or not self.samples:
            return {"gpu_util_pct": "n/a", "gpu_util_all_pct": "n/a", "memory_per_trial_mib": "n/a",
                    "util_samples": 0}
        training = [u for t, u, _ in self.samples if any(a <= t <= b for a, b in windows)]
        return {"gpu_util_pct": statistics.mean(training) if training else "n/a",
                "gpu_util_all_pct": statistics.mean(u for _, u, _ in self.samples),
                "memory_per_trial_mib": (max(m for _, _, m in self.samples) - self.idle_mem) / level,
                "util_samples": len(training)}


def pack_modes() -> list[str]:
    """Packing modes of (c): "plain" (N trials per GPU, each its own process or Ray trial) and, with the seed pack
    (TrialConfig's `pack`, pixelreg_core/pack/), "pack": the same trials with `pack: N`, trained N at a time as one
    grouped network in one process that has the GPU to itself."""
    return ["plain", "pack"] if "pack" in {f.name for f in dataclasses.fields(TrialConfig)} else ["plain"]


def c_trials(folder: Path, smoke: bool, train_images: int, kernels: dict[str, Any], threads: int,
             gpu: bool, pack: int | None = None, cap: int | None = None) -> list[TrialConfig]:
    """(c)'s trials as TrialConfigs (the processes runner's; the Ray runner writes the same as a spec)."""
    grid, seeds = ({"th": [0.2], "alpha": [4.0]}, 2) if smoke else (C_GRID, C_SEEDS)
    common = dict(task=f"idx:{folder}", reg_data=f"idx:{folder}", **c_train(smoke, train_images, kernels),
                  num_threads=threads, device="cuda" if gpu else "cpu",
                  attacks={"gaussian": {"images": 50 if smoke else 1000, "num_eps": 3}},
                  **({"pack": pack} if pack else {}))
    # regularized trials first, baselines last: a capped level (--c-rounds) is then N regularized trials, which
    # make one seed pack of N (a baseline never shares a pack with a regularized trial)
    configs = [TrialConfig(**common, th=th, alpha=alpha, seed=seed) for th in grid["th"] for alpha in grid["alpha"]
               for seed in range(seeds)]
    configs += [TrialConfig(**common, seed=seed).unregularized() for seed in range(seeds)]
    return configs[:cap] if cap else configs


def c_train(smoke: bool, train_images: int, kernels: dict[str, Any]) -> dict[str, Any]:
    return {"width": 4 if smoke else 64, "epochs": 1, "train_images": 200 if smoke else train_images,
            "test_images": 50 if smoke else 1000, "reg_images": 100 if smoke else 5000, "batch_size": 64,
            **{k: v for k, v in kernels.items() if v not in (False, "none")}}


def part_c(device: torch.device, smoke: bool, levels: list[int], mps: bool, train_images: int,
           kernels: dict[str, Any], report: Report, runner: str, level_timeout_s: float, budget: Budget
           ) -> dict[str, Any]:
    gpu = device.type == "cuda"
    cpus = os.cpu_count() or 1
    modes = pack_modes()
    out: dict[str, Any] = {"sweep": {"trials": 4 if smoke else 28, "shape": "1x28x28", "runner": runner,
                                     **c_train(smoke, train_images, kernels)},
                           "seed_pack": "measured (mode pack)" if "pack" in modes else "not built: no `pack` field "
                                                                                       "in TrialConfig",
                           "rows": []}
    report["c_sweep"] = out
    with tempfile.TemporaryDirectory(prefix="pixelreg-bench-") as tmp:
        folder = Path(tmp) / "mnist-shaped"
        write_idx(folder, 300 if smoke else 60000, 100 if smoke else 10000)
        for mps_mode in ((False, True) if mps else (False,)):
            for mode in modes:
                for level in levels:
                    row: dict[str, Any] = {"mode": mode + ("+mps" if mps_mode else ""), "trials_per_gpu": level}
                    if budget.over():
                        out["rows"].append({**row, "trials": 0, "failed": 0, "error": OVER_BUDGET})
                        report.save()
                        continue
                    if mode == "pack" and level == 1:
                        continue  # a pack of one is the plain row
                    pack = level if mode == "pack" else None
                    threads = cpus if pack else max(1, cpus // level)  # a pack is one process on the GPU
                    results = Path(tmp) / f"results-{row['mode']}-{level}"
                    run = _run_ray if runner == "ray" else _run_processes
                    try:
                        row.update(run(folder, results, smoke, train_images, kernels, threads, gpu, level, pack,
                                       mps_mode, budget.left(level_timeout_s), tmp))  # never past the budget
                    except Exception as exc:  # noqa: BLE001 - a level that cannot run is recorded, not fatal
                        row.update(trials=0, failed=0, error=failure(exc))
                    out["rows"].append(row)
                    report.save()
    base = next((r.get("trials_per_hour") for r in out["rows"] if r["trials_per_gpu"] == levels[0]
                 and r.get("trials_per_hour")), None)
    for row in out["rows"]:
        row["speedup"] = row["trials_per_hour"] / base if base and row.get("trials_per_hour") else None
    report.save()
    return out


def _summary(trials: Any, wall: float, sampler: GpuSampler | None, windows: list[tuple[float, float]],
             level: int) -> dict[str, Any]:
    """A level's figures from its trials table (ok and failed trials counted apart, the first errors named)."""
    ok_rows = trials[trials["status"] == "ok"] if trials is not None else None
    ok = int(len(ok_rows)) if ok_rows is not None else 0
    failed = int(len(trials) - ok) if trials is not None else 0
    errors = sorted({str(e)[:200] for e in trials.loc[trials["status"] != "ok", "error"]})[:3] if failed else []
    row = {"trials": ok, "failed": failed, "wall_s": wall, "trials_per_hour": ok / wall * 3600 if ok else None,
           "mean_trial_s": float(ok_rows["wall_s"].mean()) if ok else None, "errors": errors, "error": None}
    row.update(sampler.figures(windows, level) if sampler is not None else
               {"gpu_util_pct": "n/a", "gpu_util_all_pct": "n/a", "memory_per_trial_mib": "n/a", "util_samples": 0})
    return row


def _read_trials(results: Path) -> Any:
    import pandas as pd

    folder = results / "trials"
    return pd.read_parquet(folder) if folder.is_dir() and any(folder.glob("*.parquet")) else None


def _run_ray(folder: Path, results: Path, smoke: bool, train_images: int, kernels: dict[str, Any], threads: int,
             gpu: bool, level: int, pack: int | None, mps_mode: bool, timeout_s: float, tmp: str) -> dict[str, Any]:
    """The real `orchestrator launch` of (c)'s sweep, Ray fractional GPUs, at most `level` trials at once."""
    import yaml

    grid, seeds = ({"th": [0.2], "alpha": [4]}, 2) if smoke else (C_GRID, C_SEEDS)
    name = f"bench-{'mps' if mps_mode else 'plain'}-{level}{'-pack' if pack else ''}"
    train = {**c_train(smoke, train_images, kernels), "num_threads": threads, **({"pack": pack} if pack else {})}
    spec = {"name": name, "pairs": [{"task": f"idx:{folder}", "reg_data": f"idx:{folder}"}], "grid": grid,
            "seeds": seeds, "baseline": True, "train": train,
            "attacks": {"gaussian": {"images": 50 if smoke else 1000, "num_eps": 3}},
            "resources": {"cpu": threads, "gpu": (1.0 if pack else round(1.0 / level, 4)) if gpu else 0},
            "max_failures": 0}
    path = Path(tmp) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "orchestrator.cli", "launch", str(path), "--results", str(results),
           "--no-dashboard", "--max-concurrent", "1" if pack else str(level), "--progress-every", "60"]
    cmd += ["--mps"] if mps_mode else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with GpuSampler() if gpu else contextlib.nullcontext() as sampler:
        started = time.perf_counter()
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=timeout_s)
            error = None if done.returncode in (0, 1) else (done.stderr or done.stdout).strip()[-300:]
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout_s:g} s (trials finished by then are counted)"
        wall = time.perf_counter() - started
    trials = _read_trials(results / name)
    windows = []
    if trials is not None:  # training windows from the rows: finished_at (1 s precision) less attacks and training
        import pandas as pd

        for _, r in trials[trials["status"] == "ok"].iterrows():
            end = pd.Timestamp(r["finished_at"]).timestamp() - _seconds(r.get("attack_s"))
            windows.append((end - _seconds(r.get("train_s")) - 1.0, end + 1.0))
    row = _summary(trials, wall, sampler, windows, level)
    row["error"] = error
    return row


def _seconds(value: Any) -> float:
    """A trials-row time column: seconds, or a JSON object of seconds per part (attack_s: per attack)."""
    if isinstance(value, str):
        return float(sum(json.loads(value).values()))
    return float(value) if value is not None and value == value else 0.0


def _run_processes(folder: Path, results: Path, smoke: bool, train_images: int, kernels: dict[str, Any],
                   threads: int, gpu: bool, level: int, pack: int | None, mps_mode: bool, timeout_s: float,
                   tmp: str) -> dict[str, Any]:
    """(c)'s trials as plain processes (this script's --trial-worker), at most `level` at once on the GPU: what
    Ray's fractional GPUs do, without Ray. Each worker logs its epochs' wall-clock windows for the sampler."""
    from orchestrator.localray import mps

    # --c-rounds (the GPU check's short levels): `rounds` x `level` trials instead of all 28
    from pixelreg_core.pack.key import packs

    configs = c_trials(folder, smoke, train_images, kernels, threads, gpu, pack,
                       cap=C_ROUNDS[0] * level if C_ROUNDS[0] else None)
    units = packs(configs) if pack else [[cfg] for cfg in configs]  # a unit is one process
    at_once = 1 if pack else level
    results.mkdir(parents=True, exist_ok=True)
    windows_file = results / "windows.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    control = mps.check(True, address=None, gpu_per_trial=1.0 / level) if mps_mode else None
    pending = list(units)
    running: list[tuple[subprocess.Popen, list[TrialConfig]]] = []
    timed_out: list[str] = []
    exits: dict[str, int] = {}
    with mps.daemon(control, log=lambda line: None), \
            (GpuSampler() if gpu else contextlib.nullcontext()) as sampler:
        started = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        while pending or running:
            while pending and len(running) < at_once:
                unit = pending.pop(0)
                cfg_file = results / f"{unit[0].trial_id}.json"
                cfg_file.write_text(json.dumps([cfg.to_dict() for cfg in unit]))
                cmd = [sys.executable, str(Path(__file__).resolve()), "--trial-worker", str(cfg_file),
                       "--worker-out", str(results), "--windows", str(windows_file)]
                with open(results / f"{unit[0].trial_id}.log", "w") as log:  # the child keeps its own handle
                    running.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), unit))
            time.sleep(0.2)
            for proc, unit in list(running):
                if proc.poll() is not None:
                    running.remove((proc, unit))
                    exits.update({cfg.trial_id: proc.returncode for cfg in unit})
            if time.monotonic() > deadline:
                for proc, unit in running:
                    proc.kill()
                    proc.wait()
                    timed_out += [cfg.trial_id for cfg in unit]
                running, pending = [], []
        wall = time.perf_counter() - started
    windows = []
    if windows_file.exists():
        for line in windows_file.read_text().splitlines():
            w = json.loads(line)
            windows.append((w["end"] - w["seconds"], w["end"]))
    trials = _read_trials(results)
    row = _summary(trials, wall, sampler, windows, level)
    recorded = set(trials["trial_id"]) if trials is not None else set()
    lost = [t for t, code in exits.items() if t not in recorded]  # a worker that died before writing its row
    if lost:
        row["failed"] += len(lost)
        logs = sorted(results.glob("*.log"))
        tail = (logs[0].read_text().strip().splitlines()[-1:] if logs else []) or ["(no output)"]
        row["errors"] = (row["errors"] + [f"{len(lost)} worker(s) died without a trials row, e.g. exit "
                                          f"{exits[lost[0]]}: {tail[0][:200]}"])[:4]
    if timed_out:
        row["failed"] += len(timed_out)
        row["errors"] = (row["errors"] + [f"{len(timed_out)} trial(s) killed at the {timeout_s:g} s limit"])[:4]
    return row


def trial_worker(cfg_file: str, out_root: str, windows_file: str) -> int:
    """One (c) unit in this process: a trial (run_trial) or a seed pack (run_pack), recording each epoch's
    wall-clock window (end, seconds) for the utilisation sampler."""
    from pixelreg_core.trial import run_trial

    cfgs = [TrialConfig.from_dict(values) for values in json.loads(Path(cfg_file).read_text())]
    torch.set_num_threads(cfgs[0].num_threads or 1)

    def window(cfg: TrialConfig, row: dict[str, Any]) -> None:
        with open(windows_file, "a") as fh:  # one short line per epoch: appends of whole lines do not interleave
            fh.write(json.dumps({"trial": cfg.trial_id, "end": time.time(), "seconds": row["seconds"]}) + "\n")

    try:
        if len(cfgs) > 1:
            from pixelreg_core.pack.trial import run_pack

            outcomes = run_pack(cfgs, out_root, on_epoch=window, record_failure=True)
            return 0 if all(o.row.get("status") == "ok" for o in outcomes) else 1
        run_trial(cfgs[0], out_root, on_epoch=lambda row: window(cfgs[0], row), record_failure=True)
    except Exception as exc:  # noqa: BLE001 - its failed trials rows are written; the exit code says so too
        print(failure(exc), file=sys.stderr)
        return 1
    return 0


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
        if task not in b or "error" in b[task]:
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
# Each size option's default for a full run and for --smoke: the one place that main() and the help text read.
SIZE_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "threads": (2, 1),
    "widths": ("16,64", "4"),
    "attack_epochs": (3, 1),
    "levels": ("1,4,8,16", "1,2"),
    "level_timeout_s": (1800.0, 600.0),
}


def size_help(name: str) -> str:
    full, smoke = SIZE_DEFAULTS[name]
    return f"default {full}; --smoke: {smoke}"


def sized(args: argparse.Namespace, name: str) -> Any:
    """The option as given, else its default for this run's size (an unset or zero value takes the default)."""
    full, smoke = SIZE_DEFAULTS[name]
    return getattr(args, name) or (smoke if args.smoke else full)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the figures as JSON here (rewritten after every figure)")
    parser.add_argument("--parts", default="abcd", help="which parts to run (default abcd)")
    parser.add_argument("--smoke", action="store_true", help="every part at a tiny size (CI; about a minute)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch CPU threads ({size_help('threads')}; 2 is the CPU target's)")
    parser.add_argument("--widths", default=None, help=f"(a) model widths ({size_help('widths')})")
    parser.add_argument("--steps", type=int, default=None, help="(a) timed steps per figure (default 50 on CUDA)")
    parser.add_argument("--attack-epochs", type=int, default=None,
                        help=f"(b) epochs the attacked model is trained first ({size_help('attack_epochs')})")
    parser.add_argument("--levels", default=None, help=f"trials per GPU in (c) ({size_help('levels')})")
    parser.add_argument("--runner", choices=("auto", "ray", "processes"), default="auto",
                        help="(c): the real orchestrator launch on Ray, or plain processes (no Ray); auto: ray "
                             "where it is installed")
    parser.add_argument("--level-timeout-s", type=float, default=None,
                        help=f"(c) time limit per packing level, seconds ({size_help('level_timeout_s')})")
    parser.add_argument("--part-budget-s", type=float, default=None,
                        help="each part skips (and marks) its remaining rows once it has run this long")
    parser.add_argument("--mps", action="store_true", help="(c) also under CUDA MPS (run --parts c on its own)")
    parser.add_argument("--with", dest="earlier", action="append", default=[], metavar="FILE.json",
                        help="take parts not run now from an earlier --out file (e.g. --parts d --with ab.json "
                             "--with c.json)")
    parser.add_argument("--b-steps", type=int, default=None,
                        help="(b) cap on timed steps per figure (default: a whole epoch on CUDA)")
    parser.add_argument("--b-test-images", type=int, default=None,
                        help="(b) cap on test images evaluated and attacked (figures are scaled to 10,000)")
    parser.add_argument("--c-rounds", type=int, default=0,
                        help="(c) processes runner: run R x N trials at N per GPU (default: all 28 per level)")
    parser.add_argument("--sweep-train-images", type=int, default=5000,
                        help="(c) train images per benchmark trial (one epoch); trials are cut short so that the "
                             "packing levels fit in minutes")
    parser.add_argument("--trial-worker", help=argparse.SUPPRESS)  # (c)'s processes runner: one trial
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--windows", help=argparse.SUPPRESS)
    for name in KERNEL_FIELDS:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                            help="kernel option for (b)-(d) (default: the TrialConfig default)")
    args = parser.parse_args(argv)
    if args.trial_worker:
        return trial_worker(args.trial_worker, args.worker_out, args.windows)
    if args.mps and set(args.parts) - {"c"}:
        print("error: --mps: run part (c) on its own (--parts c): parts (a), (b) and (d) leave this process "
              "holding a CUDA context outside MPS while (c)'s trials run under it", file=sys.stderr)
        return 2
    torch.set_num_threads(sized(args, "threads"))
    device = resolve_device(args.device)
    kernels = {name: _parse_kernel(name, getattr(args, name)) for name in KERNEL_FIELDS
               if getattr(args, name) is not None}
    levels = [int(v) for v in sized(args, "levels").split(",")]
    widths = [int(v) for v in sized(args, "widths").split(",")]
    runner = args.runner
    if runner == "auto":
        import importlib.util

        runner = "ray" if importlib.util.find_spec("ray") is not None else "processes"
    report = Report(args.out, facts=device_facts(device, touch_cuda=set(args.parts) != {"c"}), smoke=args.smoke,
                    kernels=kernels)
    for path in args.earlier:
        earlier = json.loads(Path(path).read_text())
        report.update({k: v for k, v in earlier.items() if k in ("a_step", "b_epoch", "c_sweep")})
    report.save()
    started = time.perf_counter()
    if "a" in args.parts:
        _print_a(part_a(device, args.smoke, report, widths, args.steps, Budget(args.part_budget_s)))
    if "b" in args.parts or ("d" in args.parts and "b_epoch" not in report):
        attack_epochs = sized(args, "attack_epochs")
        _print_b(part_b(device, args.smoke, kernels, report, Budget(args.part_budget_s), attack_epochs,
                        args.b_steps, args.b_test_images))
    if "c" in args.parts:
        C_ROUNDS[0] = args.c_rounds
        timeout = sized(args, "level_timeout_s")
        _print_c(part_c(device, args.smoke, levels, args.mps, args.sweep_train_images, kernels, report, runner,
                        timeout, Budget(args.part_budget_s)))
    if "d" in args.parts:
        report["d_extrapolated"] = part_d(report["b_epoch"], report.get("c_sweep"))
        _print_d(report["d_extrapolated"])
    report["seconds"] = time.perf_counter() - started
    report.save()
    if args.out:
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
    print(f"{'width':>5s} {'step':12s} {'variant':24s} {'step s':>10s} {'images/s':>10s} {'speedup':>8s} "
          f"{'compile s':>9s}  note")
    for r in a["rows"]:
        print(f"{r['width']:5d} {'regularized' if r['regularized'] else 'plain':12s} {r['variant']:24s} "
              f"{_fmt(r['step_s']):>10s} {_fmt(r['images_per_s'], '.0f'):>10s} {_fmt(r['speedup'], '.2f'):>8s} "
              f"{_fmt(r['compile_s'], '.1f'):>9s}  {r['note']}")
    if "cpu_target" in a:
        t = a["cpu_target"]
        print(f"CPU target: regularized step {_fmt(t['step_s'])} s vs {t['target_s']} s -> "
              f"{'ok' if t['ok'] else ('MISSED' if t['ok'] is False else 'n/a')} {t['note']}")


def _print_b(b: dict[str, Any]) -> None:
    print("(b) epoch and trial time")
    for task, f in b.items():
        if "error" in f:
            print(f"{task:8s} {f['error']}")
            continue
        for label in ("regularized", "baseline"):
            r = f[label]
            print(f"{task:8s} {label:12s} step {r['step_s']:.4f} s x {r['steps_per_epoch']} + eval {r['eval_s']:.1f} s "
                  f"= epoch {r['epoch_s']:.1f} s; {f['epochs']} epochs + attacks {r['attacks_s']:.1f} s = trial "
                  f"{r['trial_s'] / 60:.1f} min")
        trained = f["attacks"].get("trained", {})
        print(f"{task:8s} attacks timed on a model trained {trained.get('epochs')} epoch(s), clean accuracy "
              f"{_fmt(trained.get('clean_acc'), '.3f')}")


def _print_c(c: dict[str, Any]) -> None:
    print(f"(c) packed sweep of {c['sweep']['trials']} MNIST-shaped trials ({c['sweep']['runner']}); seed pack: "
          f"{c['seed_pack']}")
    for r in c["rows"]:
        if r.get("wall_s") is None:
            print(f"{r['mode']:10s} {r['trials_per_gpu']:3d} per GPU: {r.get('error')}")
            continue
        print(f"{r['mode']:10s} {r['trials_per_gpu']:3d} per GPU: {r['trials']} ok, {r['failed']} failed in "
              f"{r['wall_s']:.1f} s = {_fmt(r['trials_per_hour'], '.0f')} trials/h (x{_fmt(r['speedup'], '.2f')}), "
              f"GPU util {_fmt(r['gpu_util_pct'], '.0f')} % training ({_fmt(r['gpu_util_all_pct'], '.0f')} % all), "
              f"{_fmt(r['memory_per_trial_mib'], '.0f')} MiB per trial"
              f"{'  error: ' + r['error'] if r['error'] else ''}{'  ' + '; '.join(r['errors']) if r['errors'] else ''}")


def _print_d(d: dict[str, Any]) -> None:
    p = d["packing"]
    print(f"(d) extrapolated sweep wall time at {p['trials_per_gpu']} trials per GPU ({p['mode']}, "
          f"x{p['speedup']:.2f})")
    for name, f in d.items():
        if name != "packing":
            print(f"{name:14s} {f['trials']} trials: {f['wall_h']:.2f} h")


if __name__ == "__main__":
    sys.exit(main())
