"""Synthetic limit-order-book sequences shaped like the Wunder Predictorium challenge.

Latents per sequence (time-major arrays (T, n)); docs/synth.md explains the choices:
  g      per-sequence log-volatility regime (valid sets sit `valid_shift` higher)
  v      stochastic log-volatility, AR(1) phi 0.98
  b      volatility bursts: a 2-state Markov chain (5% of the time, ~40 steps, x3.5)
         sigma = exp(g + v) * (1 + 2.5 b)
  f      fast order-flow pressure, AR(1) phi 0.4
  a      slower alpha, AR(1) phi 0.9
Returns r[t] (realised over (t, t+1]) = sigma[t] * (c_f f[t] + c_a a[t] + eps[t]), eps a
unit-variance normal scale mixture (jumps). Target of horizon h at step t = sum of r[t..t+h-1];
the oracle E[target | latents up to t] has a closed form (see `_oracle`).

Features are noisy, distributed views of these latents, quantile-normalised by a map fitted
once on a fixed-seed reference sample (`_reference`):
  p0..p5 / p6..p11  bid / ask price levels relative to an EWM of the mid (momentum), spread and
                    level gaps widening with volatility
  v0..v5 / v6..v11  log volumes at those levels: order-flow imbalance near the top of the book,
                    slower alpha deeper, thinner books when volatile
  dp0               change of the last trade price (bid-ask bounce: negative autocorrelation)
  dp1..dp3          recent trade prices relative to the mid (trade sides lean with f)
  dv0..dv3          trade sizes (larger when the trade goes with the pressure: a pure
                    interaction, no linear signal)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from kit.competition import CompetitionSpec
from kit.data.synth.core import QuantileMap, ar1, linear_filter, stratified_normal
from kit.errors import SpecError

FEATURES = (
    *(f"p{i}" for i in range(12)),
    *(f"v{i}" for i in range(12)),
    *(f"dp{i}" for i in range(4)),
    *(f"dv{i}" for i in range(4)),
)
TARGETS = ("t0", "t1", "t2", "t3")
HORIZONS = (3, 20, 50, 100)  # steps summed by t0, t1, t2, t3


@dataclass(frozen=True)
class LobParams:
    tau_seq: float = 0.35  # std of the per-sequence log-vol regime
    valid_shift: float = 0.30  # valid regimes sit this much higher in log-vol
    phi_vol: float = 0.98
    tau_vol: float = 0.2  # stationary std of the within-sequence log-vol
    burst_prob: float = 0.05  # share of time in a volatility burst (a 2-state Markov chain)
    burst_len: float = 40.0  # mean burst length in steps
    burst_scale: float = 3.5  # volatility multiplier during a burst
    phi_fast: float = 0.4
    phi_slow: float = 0.9
    c_fast: float = 0.55  # drift loadings, in units of the current volatility
    c_slow: float = 0.135
    jump_prob: float = 0.03
    jump_scale: float = 3.0
    ewm_alpha: float = 0.02  # reference price of the price-level features
    spread: float = 2.0  # mean spread in units of sigma
    gap: float = 0.6  # mean gap between book levels in units of sigma
    book_flow: tuple[float, ...] = (0.14, 0.1, 0.07, 0.05, 0.03, 0.02)  # f loading per level
    book_alpha: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.2)  # a loading per level
    side_flow: float = 0.25  # logit of a buyer-initiated trade per unit of f
    size_flow: float = 0.4  # log trade size per unit of side * f
    level_sd: float = 0.7  # per-level log-volume noise (AR)


PARAMS = LobParams()
REFERENCE_SEED = 20240917
REFERENCE_SEQS = 128


class LobGenerator:
    """Generates chunks of sequences for a `targets`-protocol spec."""

    family = "predictorium"

    def __init__(self, spec: CompetitionSpec, params: LobParams = PARAMS):
        self.spec = spec
        self.params = params
        self.columns = _feature_columns(spec)
        self.horizons = _target_horizons(spec)
        self.steps = spec.seq_len or 1000

    def regimes(self, rng: np.random.Generator, n: int, split: str) -> np.ndarray:
        shift = self.params.valid_shift if split == "valid" else 0.0
        return self.params.tau_seq * stratified_normal(rng, n) + shift

    def chunk(self, rng: np.random.Generator, regime: np.ndarray, oracle: bool):
        """(features, targets, oracle-or-None): lists of (T, n) arrays in spec order."""
        qmap, scales = _reference(self.params)
        raw, targets, orc = simulate(rng, regime, self.steps, self.horizons, self.params, oracle)
        features = [qmap.apply(raw[c], c) for c in self.columns]
        scale = scales[[HORIZONS.index(h) for h in self.horizons]]
        targets = [t / s for t, s in zip(targets, scale, strict=True)]
        if orc is not None:
            orc = [o / s for o, s in zip(orc, scale, strict=True)]
        return features, targets, orc


def _feature_columns(spec: CompetitionSpec) -> list[int]:
    if all(name in FEATURES for name in spec.features):
        return [FEATURES.index(name) for name in spec.features]
    if len(spec.features) == len(FEATURES):  # same shape, other names: map by position
        moved = [(i, name) for i, name in enumerate(spec.features)
                 if name in FEATURES and FEATURES.index(name) != i]
        if moved:  # the column named p0 would hold v0's values
            i, name = moved[0]
            raise SpecError(
                f"spec {spec.name!r}: features mix the synthetic LOB generator's names with your "
                f"own: {name!r} is column {i} of the spec, but the generator's {name} is column "
                f"{FEATURES.index(name)}; 32 names of your own are mapped by position, so put "
                "the generator's names at their own positions or rename them")
        return list(range(len(FEATURES)))
    raise SpecError(
        f"spec {spec.name!r}: the synthetic LOB generator makes the features {FEATURES[0]}.."
        f"{FEATURES[-1]} ({len(FEATURES)} columns: p0..p11, v0..v11, dp0..dp3, dv0..dv3); use a "
        f"subset of those names, or exactly {len(FEATURES)} names of your own (mapped by "
        f"position). Got {len(spec.features)}: {list(spec.features)[:6]}..."
    )


def _target_horizons(spec: CompetitionSpec) -> list[int]:
    if len(spec.targets) <= len(HORIZONS):
        # t0..t3 get their own horizons; other names the horizons left, in order
        left = iter(h for name, h in zip(TARGETS, HORIZONS, strict=True)
                    if name not in spec.targets)
        return [HORIZONS[TARGETS.index(name)] if name in TARGETS else next(left)
                for name in spec.targets]
    raise SpecError(
        f"spec {spec.name!r}: the synthetic LOB generator makes at most {len(HORIZONS)} targets "
        f"(future returns over {HORIZONS} steps, named {TARGETS}); got {len(spec.targets)}"
    )


@lru_cache(maxsize=4)
def _reference(params: LobParams) -> tuple[QuantileMap, np.ndarray]:
    """Fixed normalising constants, the same whatever data the user generates: the quantile map
    is fitted on a fixed-seed reference sample, half train-regime and half valid-regime (as an
    organiser fits one transform on all their data); target scales make train std ~1."""
    rng = np.random.default_rng(REFERENCE_SEED)
    is_valid = np.arange(REFERENCE_SEQS) % 2 == 1
    regime = params.tau_seq * stratified_normal(rng, REFERENCE_SEQS) + params.valid_shift * is_valid
    raw, targets, _ = simulate(rng, regime, 1000, HORIZONS, params, oracle=False)
    qmap = QuantileMap(raw.reshape(raw.shape[0], -1).T)
    scales = np.array([t[:, ~is_valid].std() for t in targets])
    return qmap, scales


def simulate(
    rng: np.random.Generator,
    regime: np.ndarray,
    steps: int,
    horizons: list[int] | tuple[int, ...],
    prm: LobParams = PARAMS,
    oracle: bool = False,
):
    """Raw features (32, T, n) float32, raw targets and (optionally) oracles: lists of (T, n)."""
    n = regime.size
    span = steps + max(horizons, default=1)
    g = regime.astype(np.float32)

    # latents over the whole span (targets look up to max(horizons) steps ahead)
    v, f, a = ar1(rng, span, n, [prm.phi_vol, prm.phi_fast, prm.phi_slow], [prm.tau_vol, 1, 1])
    burst = _bursts(rng, span, n, prm)
    log_sigma = g + v + np.log1p((prm.burst_scale - 1) * burst)
    sigma = np.exp(log_sigma)
    jump = np.float32(prm.jump_scale)
    eps = rng.standard_normal((span, n), dtype=np.float32)
    eps[rng.random((span, n), dtype=np.float32) < prm.jump_prob] *= jump
    eps /= np.sqrt(1 + prm.jump_prob * (jump * jump - 1))  # unit variance
    ret = sigma * (prm.c_fast * f + prm.c_slow * a + eps)
    cum = np.zeros((span + 1, n))
    np.cumsum(ret, axis=0, dtype=np.float64, out=cum[1:])
    targets = [cum[h : h + steps] - cum[:steps] for h in horizons]
    if oracle:
        orc = [_oracle(g, v[:steps], burst[:steps], f[:steps], a[:steps], h, prm) for h in horizons]
    else:
        orc = None

    # feature-side noise processes over the T visible steps
    noise = ar1(
        rng, steps, n,
        [0.9, 0.95, 0.95, 0.9, *[0.8] * 12, *[0.9] * 10],
        [0.3, 0.5, 0.5, 0.2, *[prm.level_sd] * 12, *[0.3] * 10],
    )  # fmt: skip
    spread_w, book_b, book_a, activity = noise[:4]
    level, gap_noise = noise[4:16], noise[16:26]
    sig, fT, aT, ret_t, lsig = sigma[:steps], f[:steps], a[:steps], ret[:steps], log_sigma[:steps]
    seq_spread = 0.2 * rng.standard_normal(n, dtype=np.float32)
    half = 0.5 * prm.spread * sig * np.exp(spread_w + seq_spread)

    raw = np.empty((len(FEATURES), steps, n), dtype=np.float32)
    # mid minus its EWM: d[t] = (1 - alpha) (d[t-1] + r[t-1]), started near stationarity
    keep = np.float32(1 - prm.ewm_alpha)
    d = np.empty((steps, n), dtype=np.float32)
    d[0] = sig[0] * keep / np.sqrt(prm.ewm_alpha * (2 - prm.ewm_alpha)) * rng.standard_normal(n)
    d[1:] = keep * ret_t[:-1]
    linear_filter(d, keep)
    gaps = np.exp(gap_noise)  # (10, T, n): 5 bid gaps, 5 ask gaps, in units of gap * sigma
    gaps *= prm.gap * sig
    depth = np.cumsum(gaps[:5], axis=0), np.cumsum(gaps[5:], axis=0)
    jitter = rng.standard_normal((12, steps, n), dtype=np.float32)
    jitter *= 0.1 * sig
    bid, ask = d - half, d + half
    for i in range(6):
        raw[i] = bid + jitter[i]
        raw[6 + i] = ask + jitter[6 + i]
        if i:
            raw[i] -= depth[0][i - 1]
            raw[6 + i] += depth[1][i - 1]

    thin = 0.3 * lsig
    vol_noise = rng.standard_normal((12, steps, n), dtype=np.float32)
    vol_noise *= 0.3
    vol_noise += level
    for i in range(6):
        lean = prm.book_flow[i] * fT + prm.book_alpha[i] * aT
        raw[12 + i] = book_b + vol_noise[i] + lean - thin
        raw[18 + i] = book_a + vol_noise[6 + i] - lean - thin

    # trades: sides lean with the order flow; sizes grow when a trade goes with it
    buy = 1 / (1 + np.exp(-prm.side_flow * fT))
    sides = np.where(rng.random((4, steps, n), dtype=np.float32) < buy, 1, -1).astype(np.float32)
    z = rng.standard_normal((3, 4, steps, n), dtype=np.float32)
    prev_side = np.concatenate([np.where(rng.random((1, n)) < 0.5, 1.0, -1.0), sides[0, :-1]])
    prev_half = np.concatenate([half[:1], half[:-1]])
    prev_ret = np.concatenate([sig[:1] * rng.standard_normal((1, n)), ret_t[:-1]])
    raw[24] = prev_ret + sides[0] * half - prev_side * prev_half + 0.2 * sig * z[0, 0]
    for j in range(1, 4):
        raw[24 + j] = sides[j] * half * (1 + 0.25 * z[0, j]) + 0.25 * sig * z[1, j]
    busy = activity + 0.15 * lsig
    for j in range(4):
        raw[28 + j] = busy + 0.8 * z[2, j] + prm.size_flow * sides[j] * fT
    return raw, targets, orc


def _bursts(rng: np.random.Generator, span: int, n: int, prm: LobParams) -> np.ndarray:
    """Volatility-burst indicator (span, n) float32: a stationary 2-state Markov chain."""
    p_off = 1 / prm.burst_len
    p_on = prm.burst_prob * p_off / (1 - prm.burst_prob)
    u = rng.random((span, n), dtype=np.float32)
    b = np.empty((span, n), dtype=bool)
    b[0] = u[0] < prm.burst_prob
    for t in range(1, span):
        b[t] = np.where(b[t - 1], u[t] >= p_off, u[t] < p_on)
    return b.astype(np.float32)


def _oracle(g, v, burst, f, a, h: int, prm: LobParams) -> np.ndarray:
    """E[sum_{k<h} r[t+k] | latents at t]. Volatility and the drift latents are independent, so
    E[sigma_{t+k} (c_f f_{t+k} + c_a a_{t+k})] = E[sigma_{t+k}] (c_f phi_f^k f_t + c_a phi_a^k a_t)
    with E[sigma_{t+k}] = exp(g + phi_v^k v_t + tau_v^2 (1 - phi_v^{2k}) / 2)
    * (1 + (K - 1) P(burst at t+k)), P = pi + (burst_t - pi) lambda^k for the Markov chain."""
    p_off = 1 / prm.burst_len
    p_on = prm.burst_prob * p_off / (1 - prm.burst_prob)
    lam = 1 - p_on - p_off
    v = v.astype(np.float64)
    out = np.zeros(v.shape)
    for k in range(h):
        pv = prm.phi_vol**k
        level = np.exp(g + pv * v + 0.5 * prm.tau_vol**2 * (1 - pv * pv))
        level *= 1 + (prm.burst_scale - 1) * (prm.burst_prob + (burst - prm.burst_prob) * lam**k)
        out += level * (prm.c_fast * prm.phi_fast**k * f + prm.c_slow * prm.phi_slow**k * a)
    return out
