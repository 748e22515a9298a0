"""The statistics of an experiment: tests a team may check every hour, and the classical ones beside them.

Always-valid p-values (Johari, Pekelis and Walsh, "Always valid inference",
2017) come from mixture likelihood ratios, which are test martingales under
the null: by Ville's inequality the chance they ever exceed ``1/alpha`` is at
most ``alpha``, however often one looks. The p-value after ``n`` looks is the
running minimum of ``1/LR``.

- Interleaving (and each pair of a multileave): the wins of team A among
  queries whose clicks decided between the two are Binomial(w + l, p), with
  ``p = 1/2`` under the null; the mixture over p ~ Beta(a, a) has the closed
  form ``B(a + w, a + l) / B(a, a) * 2^(w + l)``. Its confidence sequence for p
  is every p whose own likelihood ratio stays below ``1/alpha``.
- A/B: the normal mixture SPRT on the difference of per-impression means,
  with the variance estimated from the data (asymptotically valid).

Beside them: the fixed-horizon binomial sign test, Welch's t-test, bootstrap
intervals, and a chi-square sample-ratio-mismatch check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

SRM_ALPHA = 0.001  # a sample-ratio mismatch is flagged below this p-value (assignment is broken, not unlucky)
SIGN_PRIOR = 10.0  # Beta(a, a) mixing prior of the always-valid sign test: sd 0.11 around p = 1/2


# ---------------------------------------------------------------- interleaving: wins against losses


def sign_log_lr(wins: int, losses: int, a: float = SIGN_PRIOR) -> float:
    """log of the Beta(a, a) mixture likelihood ratio of ``wins`` against ``losses`` (H0: p = 1/2)."""
    return float(special.betaln(a + wins, a + losses) - special.betaln(a, a) + (wins + losses) * math.log(2.0))


def sign_p_always_valid(wins: int, losses: int, a: float = SIGN_PRIOR) -> float:
    """``1 / LR`` capped at 1: an always-valid p-value at this look (keep the running minimum over looks)."""
    return float(min(1.0, math.exp(-sign_log_lr(wins, losses, a))))


def sign_p_fixed(wins: int, losses: int) -> float:
    """The classical two-sided binomial sign test (valid only if looked at once, at a planned size)."""
    n = wins + losses
    return 1.0 if n == 0 else float(stats.binomtest(wins, n, 0.5).pvalue)


def sign_confidence_sequence(wins: int, losses: int, alpha: float = 0.05, a: float = SIGN_PRIOR) -> tuple[float, float]:
    """An always-valid (1 - alpha) interval for p = P(A wins | the query decided between A and B).

    Every p whose likelihood ratio (the Beta mixture against the point p) stays below 1/alpha; it holds
    simultaneously at every look, so the band drawn over impressions is honest to look at.
    """
    n = wins + losses
    if n == 0:
        return 0.0, 1.0
    mix = special.betaln(a + wins, a + losses) - special.betaln(a, a)
    bound = math.log(1.0 / alpha)

    def excess(p: float) -> float:
        return mix - (wins * math.log(p) + losses * math.log1p(-p)) - bound

    centre = min(max(wins / n, 1e-9), 1 - 1e-9)
    eps = 1e-12
    lo = 0.0 if excess(eps) < 0 else optimize.brentq(excess, eps, centre) if excess(centre) < 0 else centre
    hi = 1.0 if excess(1 - eps) < 0 else optimize.brentq(excess, centre, 1 - eps) if excess(centre) < 0 else centre
    return float(lo), float(hi)


def delta_bootstrap(wins: int, losses: int, ties: int, n_boot: int = 2000, alpha: float = 0.05,
                    seed: int = 0) -> tuple[float, float, float]:
    """Chapelle et al.'s Δ = (wins - losses) / (wins + losses + ties) with a percentile bootstrap interval
    over the clicked queries (resampling queries is multinomial resampling of the three counts)."""
    n = wins + losses + ties
    if n == 0:
        return 0.0, -1.0, 1.0
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, [wins / n, losses / n, ties / n], size=n_boot)
    deltas = (draws[:, 0] - draws[:, 1]) / n
    lo, hi = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    return (wins - losses) / n, float(lo), float(hi)


# ---------------------------------------------------------------- A/B: difference of means


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of one arm's per-impression outcome: count, sum, sum of squares."""

    n: int
    total: float
    squares: float

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def var(self) -> float:
        if self.n < 2:
            return 0.0
        return max(0.0, (self.squares - self.total ** 2 / self.n) / (self.n - 1))


def msprt_p(a: Moments, b: Moments, tau: float | None = None) -> float:
    """Always-valid p of mean(b) = mean(a) at this look: the normal mixture SPRT with a N(0, tau^2) prior on
    the difference (Johari et al. 2017), variance estimated from the data. ``tau`` defaults to a tenth of the
    pooled standard deviation: effects of that size are detected soonest."""
    if a.n < 2 or b.n < 2:
        return 1.0
    v = a.var / a.n + b.var / b.n
    if v <= 0:
        return 1.0
    if tau is None:
        tau = 0.1 * math.sqrt(max((a.var + b.var) / 2, 1e-12))
    t2 = tau * tau
    d = b.mean - a.mean
    log_lr = 0.5 * math.log(v / (v + t2)) + d * d * t2 / (2 * v * (v + t2))
    return float(min(1.0, math.exp(-log_lr)))


def welch(a: Moments, b: Moments, alpha: float = 0.05) -> tuple[float, float, float, float]:
    """(difference b - a, its (1 - alpha) interval, fixed-horizon p) by Welch's t-test."""
    if a.n < 2 or b.n < 2:
        return b.mean - a.mean, -math.inf, math.inf, 1.0
    se = math.sqrt(a.var / a.n + b.var / b.n)
    d = b.mean - a.mean
    if se == 0:
        return d, d, d, 1.0 if d == 0 else 0.0
    res = stats.ttest_ind_from_stats(b.mean, math.sqrt(b.var), b.n, a.mean, math.sqrt(a.var), a.n, equal_var=False)
    # Welch-Satterthwaite degrees of freedom for the interval
    num = (a.var / a.n + b.var / b.n) ** 2
    den = (a.var / a.n) ** 2 / (a.n - 1) + (b.var / b.n) ** 2 / (b.n - 1)
    dof = num / den if den > 0 else a.n + b.n - 2
    q = float(stats.t.ppf(1 - alpha / 2, dof))
    return d, d - q * se, d + q * se, float(res.pvalue)


def msprt_confidence_sequence(a: Moments, b: Moments, alpha: float = 0.05,
                              tau: float | None = None) -> tuple[float, float]:
    """The always-valid interval for mean(b) - mean(a) that matches :func:`msprt_p` (normal mixture)."""
    if a.n < 2 or b.n < 2:
        return -math.inf, math.inf
    v = a.var / a.n + b.var / b.n
    if v <= 0:  # no variation in either arm yet: no interval to speak of
        return math.nan, math.nan
    if tau is None:
        tau = 0.1 * math.sqrt(max((a.var + b.var) / 2, 1e-12))
    t2 = tau * tau
    d = b.mean - a.mean
    half = math.sqrt(max(0.0, (2 * v * (v + t2) / t2) * (math.log(1 / alpha) - 0.5 * math.log(v / (v + t2)))))
    return d - half, d + half


# ---------------------------------------------------------------- assignment health


def srm(observed: list[int], shares: list[float]) -> float:
    """Chi-square p-value of the observed counts per arm against the configured shares (1.0 without data).
    Below :data:`SRM_ALPHA` the split is not what the config says: assignment, logging or bots are broken."""
    total = sum(observed)
    if total == 0 or len(observed) < 2:
        return 1.0
    expected = [total * s for s in shares]
    return float(stats.chisquare(observed, expected).pvalue)
