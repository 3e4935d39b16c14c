"""orchestrator/plan/resources.py: how many trials run side by side."""

from __future__ import annotations

from orchestrator.plan.resources import concurrent_slots


def test_concurrent_slots_take_the_scarcer_resource():
    assert concurrent_slots(cpus=16, gpus=1, cpu=1, gpu=0.25, cap=None) == 4   # 4 trials share the GPU
    assert concurrent_slots(cpus=2, gpus=0, cpu=1, gpu=0, cap=None) == 2
    assert concurrent_slots(cpus=8, gpus=0, cpu=2, gpu=0, cap=3) == 3
    assert concurrent_slots(cpus=1, gpus=0, cpu=2, gpu=0, cap=None) == 1
