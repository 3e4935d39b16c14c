"""What a trial asks for against what a machine or cluster has: the GPU check and how many trials fit at once.

Used by `launch` (against this machine, or the Ray cluster it joined) and by `plan` (against this machine).
`validate` and `plan` never refuse a GPU spec: they may run on a laptop for a cluster.
"""

from __future__ import annotations

from orchestrator.errors import UserError
from orchestrator.spec.schema import SweepSpec


def local_gpus() -> int:
    """CUDA GPUs on this machine (imports torch: call it only for a spec that asks for GPUs)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_resources(spec: SweepSpec, available_gpus: float | None = None, where: str = "here") -> None:
    """Refuse a GPU request where no GPU exists. Pass Ray's GPU count once Ray runs (`where="in Ray"`): a trial
    Ray cannot place would wait forever; by default this machine's, as torch sees them."""
    if spec.resources.gpu <= 0:
        return
    if available_gpus is None:
        available_gpus = local_gpus()
    if available_gpus <= 0:
        raise UserError(f"{spec.source}: resources.gpu: {spec.resources.gpu} GPU per trial asked for, but no CUDA "
                        f"GPU is available {where}; set resources.gpu: 0 to run on CPU, or launch on a GPU machine")
    if spec.resources.gpu > available_gpus:
        raise UserError(f"{spec.source}: resources.gpu: {spec.resources.gpu} GPUs per trial but only "
                        f"{available_gpus:g} available {where}; lower resources.gpu")


def concurrent_slots(cpus: float, gpus: float, cpu: float, gpu: float, cap: int | None = None) -> int:
    """How many trials fit at once: the scarcer of CPUs and GPUs decides (at least one trial's worth of CPUs);
    `cap` (--max-concurrent) on top. 0 only when trials need a GPU and there is none (plan says so; launch refuses
    such a spec earlier)."""
    slots = max(1, int(cpus // cpu)) if cpu > 0 else 10**6
    if gpu > 0:
        slots = min(slots, int(gpus // gpu + 1e-9))
    if cap:
        slots = min(slots, cap)
    return slots
