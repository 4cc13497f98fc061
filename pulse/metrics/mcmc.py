"""Markov-chain diagnostics: split R-hat and effective sample size across chains (pure tensor functions).

Both follow Gelman et al., *Bayesian Data Analysis* (3rd ed., ch. 11) and Stan's reference manual
("Effective sample size"), without rank normalisation: ``traces`` are ``[T, C]`` (T draws of C chains of one
scalar). A chain that has not forgotten its start makes R-hat exceed 1 (1.01-1.1 are the usual thresholds)
and the ESS small.
"""

from __future__ import annotations

import math

import torch


def _check_traces(traces: torch.Tensor, min_length: int) -> torch.Tensor:
    if traces.ndim != 2:
        raise ValueError(f"traces must be [draws, chains], got shape {tuple(traces.shape)}")
    if traces.shape[0] < min_length:
        raise ValueError(f"traces need at least {min_length} draws per chain, got {traces.shape[0]}")
    return traces.double()


def split_rhat(traces: torch.Tensor) -> float:
    """Split R-hat of ``[T, C]`` traces (``T >= 4``): each chain is cut in two halves, then the potential
    scale reduction ``sqrt(var_plus / W)`` of the ``2C`` half-chains; 1 when they agree.

    Returns NaN when every draw is equal (no spread to compare).
    """
    x = _check_traces(traces, 4)
    half = x.shape[0] // 2
    halves = torch.cat([x[:half], x[-half:]], dim=1)  # [n, 2C]; the middle draw of an odd T is dropped
    n = halves.shape[0]
    within = halves.var(dim=0, unbiased=True).mean()
    between = n * halves.mean(dim=0).var(unbiased=True)
    if within <= 0:
        return math.nan
    var_plus = (n - 1) / n * within + between / n
    return math.sqrt(float(var_plus / within))


def _autocovariance(chain: torch.Tensor) -> torch.Tensor:
    """Biased autocovariance of a ``[T]`` series at lags ``0 .. T-1`` (by FFT)."""
    length = chain.shape[0]
    centred = chain - chain.mean()
    size = 1 << (2 * length - 1).bit_length()
    spectrum = torch.fft.rfft(centred, n=size)
    return torch.fft.irfft(spectrum * spectrum.conj(), n=size)[:length] / length


def effective_sample_size(traces: torch.Tensor) -> float:
    """Multi-chain effective sample size of ``[T, C]`` traces (``T >= 4``), Stan's estimator.

    The combined autocorrelation ``rho_t = 1 - (W - mean_c acov_c(t)) / var_plus`` is summed in pairs
    with Geyer's initial positive and monotone sequence; ``ESS = C T / (-1 + 2 sum_pairs)``, capped at
    ``C T log10(C T)`` as Stan does. Returns NaN when every draw is equal.
    """
    x = _check_traces(traces, 4)
    length, chains = x.shape
    acov = torch.stack([_autocovariance(x[:, c]) for c in range(chains)], dim=1)  # [T, C]
    chain_var = acov[0] * length / (length - 1)
    within = chain_var.mean()
    var_plus = within * (length - 1) / length
    if chains > 1:
        var_plus = var_plus + x.mean(dim=0).var(unbiased=True)
    if var_plus <= 0:
        return math.nan
    rho = 1.0 - (within - acov.mean(dim=1)) / var_plus
    rho[0] = 1.0
    pair_sums = []
    for t in range(0, length - 1, 2):
        pair = float(rho[t] + rho[t + 1])
        if pair <= 0:  # initial positive sequence
            break
        if pair_sums and pair > pair_sums[-1]:  # initial monotone sequence
            pair = pair_sums[-1]
        pair_sums.append(pair)
    tau = -1.0 + 2.0 * sum(pair_sums) if pair_sums else 1.0
    total = chains * length
    return float(min(total / max(tau, 1e-12), total * math.log10(total)))
