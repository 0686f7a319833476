"""Synthetic next-state sequences shaped like the Wunder RNN challenge.

A latent nonlinear dynamical system, mean-reverting at several speeds:
    z[t+1] = phi z[t] + beta tanh(W z[t] + b_seq) + beta_e (tanh(E z[t])^2 - 1/2) + eta[t]
with W skew-symmetric (latents rotate into each other rather than lock onto fixed points) and an
even term that no linear predictor can use, observed through a fixed linear mixing plus
per-feature noise: x[t] = L z[t] + zeta[t].
The per-sequence bias b_seq makes sequences differ. Features are standardised with fixed
constants (a fixed-seed reference sample), so they are ~N(0, 1), and clipped at +-5.2.
The oracle E[x[t+1] | z[t]] = L (z[t+1] - eta[t]) is exact (before clipping, which is rare).
The structure (phi, W, L, noise levels) is fixed by a constant seed: it defines the
competition; the user's seed only changes the draws.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from kit.competition import CompetitionSpec
from kit.data.synth.core import CLIP, stratified_normal
from kit.errors import SpecError

STRUCTURE_SEED = 31
REFERENCE_SEED = 20240918
REFERENCE_SEQS = 64
BETA = 0.5
GAIN = 1.5
BETA_EVEN = 2.0  # an even (quadratic-like) drift: invisible to linear predictors
SHOCK = 0.8
BIAS_SD = 0.3
NOISE_VAR = (0.15, 1.2)


class RnnGenerator:
    """Generates chunks of sequences for a `next-state` spec with any number of features."""

    family = "rnn"

    def __init__(self, spec: CompetitionSpec):
        if not spec.features:
            raise SpecError(f"spec {spec.name!r}: the next-state generator needs >= 1 feature")
        self.spec = spec
        self.steps = spec.seq_len or 1000
        self.structure = _structure(len(spec.features))

    def regimes(self, rng: np.random.Generator, n: int, split: str) -> np.ndarray:
        """Per-sequence biases b_seq, shape (n, latent dim); valid sequences are drawn alike."""
        d = self.structure.phi.size
        z = np.stack([stratified_normal(rng, n) for _ in range(d)], axis=1)
        return BIAS_SD * z

    def chunk(self, rng: np.random.Generator, regime: np.ndarray, oracle: bool):
        """(features, [], oracle-or-None): lists of (T, n) arrays, one per feature."""
        mean, std = _reference(len(self.spec.features))
        x, expected = simulate(rng, regime, self.steps, self.structure, oracle)
        features = [np.clip((x[..., j] - mean[j]) / std[j], -CLIP, CLIP) for j in range(x.shape[2])]
        if expected is None:
            return features, [], None
        return features, [], [(expected[..., j] - mean[j]) / std[j] for j in range(x.shape[2])]


class Structure(NamedTuple):
    """The fixed dynamics of one competition (one per feature count)."""

    phi: np.ndarray  # (d,) linear mean reversion per latent
    w: np.ndarray  # (d, d) odd coupling inside tanh
    beta: np.ndarray  # (d,) weight of the odd drift
    even: np.ndarray  # (d, d) coupling of the even drift
    beta_even: np.ndarray  # (d,) weight of the even drift
    shock: np.ndarray  # (d,) latent innovation std
    mixing: np.ndarray  # (F, d) observation matrix
    noise: np.ndarray  # (F,) observation noise std


@lru_cache(maxsize=8)
def _structure(n_features: int) -> Structure:
    rng = np.random.default_rng([STRUCTURE_SEED, n_features])
    d = max(4, min(16, n_features // 3))
    phi = np.linspace(0.2, 0.9, d)  # mean reversion from fast to slow
    a = rng.standard_normal((d, d))
    skew = a - a.T  # rotation-like coupling: latents chase each other instead of locking
    scale = np.sqrt(1 - phi**2)  # drifts and shocks scaled alike keep latent variances ~1
    return Structure(
        phi=phi,
        w=GAIN * skew / np.abs(np.linalg.eigvals(skew)).max(),
        beta=BETA * scale,
        even=1.5 * rng.standard_normal((d, d)) / np.sqrt(d),
        beta_even=BETA_EVEN * scale,
        shock=SHOCK * scale,
        mixing=rng.standard_normal((n_features, d)) / np.sqrt(d),
        noise=np.sqrt(rng.uniform(*NOISE_VAR, n_features)),  # some features much noisier
    )


@lru_cache(maxsize=8)
def _reference(n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed standardisation constants (mean, std per feature) from a fixed-seed sample."""
    rng = np.random.default_rng(REFERENCE_SEED)
    structure = _structure(n_features)
    d = structure.phi.size
    bias = BIAS_SD * np.stack([stratified_normal(rng, REFERENCE_SEQS) for _ in range(d)], 1)
    x, _ = simulate(rng, bias, 1000, structure, oracle=False)
    flat = x.reshape(-1, n_features)
    return flat.mean(axis=0), flat.std(axis=0)


def simulate(rng: np.random.Generator, bias: np.ndarray, steps: int, st: Structure, oracle: bool):
    """Raw observations (T, n, F) and, if asked, E[x[t+1] | z[t]] (T, n, F)."""
    n, d = bias.shape
    shocks = rng.standard_normal((steps, n, d)) * st.shock
    z = np.empty((steps + 1, n, d))
    z[0] = rng.standard_normal((n, d))  # latents have ~unit stationary variance
    drift = np.empty((steps, n, d)) if oracle else None
    for t in range(steps):
        mean_next = st.phi * z[t] + st.beta * np.tanh(z[t] @ st.w.T + bias)
        mean_next += st.beta_even * (np.tanh(z[t] @ st.even.T) ** 2 - 0.5)
        if drift is not None:
            drift[t] = mean_next
        z[t + 1] = mean_next + shocks[t]
    x = z[:steps] @ st.mixing.T
    x += rng.standard_normal(x.shape) * st.noise
    return x, (drift @ st.mixing.T if oracle else None)
