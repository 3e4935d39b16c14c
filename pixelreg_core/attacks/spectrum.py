"""Fourier analysis of the boundary perturbations (Li et al. 2023): where in frequency a model is attackable.

What is averaged: the power spectrum |FFT2(delta)|^2 of each successful perturbation delta = adv - x (channels
averaged), averaged over images and repeats. Averaging power, not the signed perturbations, is deliberate: signed
perturbations of different images point in unrelated directions and cancel, while their power adds up. The 2-D
mean power is reduced to a radial profile: mean power per integer radius bin (cycles per image) around the
centred zero frequency. A regularized model should need relatively more low-frequency (small radius) power.
"""

from __future__ import annotations

from typing import Any

import torch


def mean_power_spectrum(perturbations: torch.Tensor) -> torch.Tensor:
    """[n, C, H, W] perturbations -> [H, W] mean power spectrum, zero frequency at the centre."""
    gray = perturbations.double().mean(dim=1)
    power = torch.fft.fft2(gray).abs().pow(2)
    return torch.fft.fftshift(power.mean(dim=0), dim=(-2, -1))


def radial_profile(power: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(radius bins, mean power per bin) of a centred 2-D spectrum; bins are rounded distances to the centre."""
    h, w = power.shape
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    radius = torch.sqrt((yy**2 + xx**2).double()).round().long().flatten()
    sums = torch.zeros(int(radius.max()) + 1, dtype=torch.float64).index_add_(0, radius, power.flatten())
    counts = torch.bincount(radius, minlength=len(sums)).double()
    keep = counts > 0
    return torch.arange(len(sums), dtype=torch.float64)[keep], sums[keep] / counts[keep]


def spectrum_rows(perturbations: torch.Tensor, attack: str = "boundary") -> list[dict[str, Any]]:
    """Spectrum-table rows (without key columns); none when there is no perturbation to analyse."""
    if len(perturbations) == 0:
        return []
    radii, power = radial_profile(mean_power_spectrum(perturbations))
    return [{"attack": attack, "radius": float(r), "power": float(p)} for r, p in zip(radii, power, strict=True)]
