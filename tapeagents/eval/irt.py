"""Item response theory: abilities and difficulties from who solved what.

The two-parameter logistic model (2PL) says subject s solves item i with probability
`sigmoid(a_i * (theta_s - b_i))`: theta is the subject's ability, b the item's difficulty on the
same scale, a its discrimination (how sharply success turns on ability). The one-parameter
model (1PL, Rasch) fixes a = 1.

`fit_irt` finds the maximum a posteriori parameters with normal priors on theta, b and log a,
by L-BFGS on the joint objective with its analytic gradient. Missing cells are skipped, so a
half-empty matrix of 176 subjects × 1,019 items fits in well under a second. `bootstrap` refits
with Poisson(1) weights on the observed cells for intervals on every parameter.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from tapeagents.errors import UsageError
from tapeagents.eval.matrix import Responses

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["Bootstrap", "IRTFit", "Model", "Priors", "bootstrap", "fit_irt"]

Model = Literal["1pl", "2pl"]


@dataclass(frozen=True)
class Priors:
    """Normal priors that keep the MAP fit finite where data cannot (all-pass or all-fail items).

    With `hierarchical`, the means and spreads of b and log a are re-estimated from the fit
    (empirical Bayes, `rounds` rounds), much as py-irt's hierarchical priors learn them. The
    fixed defaults fit the BRIDGE data as well and twice as fast (docs/bridge.md).
    """

    theta_sd: float = 1.0
    """Abilities ~ N(0, theta_sd): also fixes the scale's origin and unit."""
    b_mean: float = 0.0
    b_sd: float = 3.0
    log_a_mean: float = 0.0
    log_a_sd: float = 0.5
    """log discrimination ~ N(log_a_mean, log_a_sd); ignored by the 1PL model."""
    hierarchical: bool = False
    rounds: int = 3


@dataclass
class IRTFit:
    """Fitted parameters, in the order of `subjects` and `items`."""

    model: Model
    subjects: list[str]
    items: list[str]
    theta: NDArray[np.float64]
    b: NDArray[np.float64]
    a: NDArray[np.float64]
    priors: Priors
    neg_log_posterior: float
    converged: bool
    seconds: float
    iterations: int = 0

    def ability(self, subject: str) -> float:
        return float(self.theta[self._index(self.subjects, subject, "subject")])

    def difficulty(self, item: str) -> float:
        return float(self.b[self._index(self.items, item, "item")])

    def difficulties(self) -> dict[str, float]:
        return dict(zip(self.items, self.b.tolist(), strict=True))

    def abilities(self) -> dict[str, float]:
        return dict(zip(self.subjects, self.theta.tolist(), strict=True))

    def probability(self, subject: str, item: str) -> float:
        """P(subject solves item) under the model."""
        i = self._index(self.items, item, "item")
        z = self.a[i] * (self.ability(subject) - self.b[i])
        return float(1.0 / (1.0 + math.exp(-z)))

    def write_csv(self, items_path: str | Path, subjects_path: str | Path | None = None) -> None:
        """Item parameters (`item,a,b`) and, optionally, abilities (`subject,theta`) as CSV."""
        with open(items_path, "w", encoding="utf-8") as out:
            out.write("item,a,b\n")
            for item, a, b in zip(self.items, self.a, self.b, strict=True):
                out.write(f"{_csv(item)},{a:.6g},{b:.6g}\n")
        if subjects_path is not None:
            with open(subjects_path, "w", encoding="utf-8") as out:
                out.write("subject,theta\n")
                for subject, theta in zip(self.subjects, self.theta, strict=True):
                    out.write(f"{_csv(subject)},{theta:.6g}\n")

    @staticmethod
    def _index(names: list[str], name: str, what: str) -> int:
        try:
            return names.index(name)
        except ValueError:
            raise UsageError(f"Unknown {what} {name!r}; the fit has {len(names)}.") from None


def _csv(text: str) -> str:
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text


class _Objective:
    """Negative log posterior and its gradient over x = [theta, b, log a (2PL only)].

    Only observed cells enter: `rows`, `cols`, `y` and `w` list them, so the cost follows the
    number of responses, not the size of the matrix.
    """

    def __init__(
        self, responses: Responses, model: Model, weights: NDArray[np.float64] | None
    ) -> None:
        seen = responses.observed
        self.rows, self.cols = np.nonzero(seen)
        self.y = responses.scores[self.rows, self.cols]
        w = np.ones(len(self.y)) if weights is None else weights[self.rows, self.cols]
        self.w = w.astype(float)
        self.model = model
        self.n_subjects, self.n_items = seen.shape
        self.priors = Priors()

    def split(
        self, x: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        s, i = self.n_subjects, self.n_items
        theta, b = x[:s], x[s : s + i]
        log_a = x[s + i :] if self.model == "2pl" else np.zeros(i)
        return theta, b, log_a

    def __call__(self, x: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        p = self.priors
        theta, b, log_a = self.split(x)
        a = np.exp(log_a)
        rows, cols = self.rows, self.cols
        diff = theta[rows] - b[cols]
        a_cell = a[cols]
        z = a_cell * diff
        # -log likelihood of y under sigmoid(z) is softplus(z) - y z, computed stably
        e = np.exp(-np.abs(z))
        softplus = np.maximum(z, 0.0) + np.log1p(e)
        # elementwise sums, not `@`: a BLAS dot spins up threads that cost more than it saves
        value = float(np.sum(self.w * (softplus - self.y * z)))
        sigmoid = np.where(z >= 0, 1.0, e) / (1.0 + e)
        r = self.w * (sigmoid - self.y)
        g_theta = _sum_by(rows, r * a_cell, self.n_subjects) + theta / p.theta_sd**2
        g_b = -a * _sum_by(cols, r, self.n_items) + (b - p.b_mean) / p.b_sd**2
        value += float(np.sum(theta**2)) / (2 * p.theta_sd**2)
        value += float(np.sum((b - p.b_mean) ** 2)) / (2 * p.b_sd**2)
        parts = [g_theta, g_b]
        if self.model == "2pl":
            g_log_a = a * _sum_by(cols, r * diff, self.n_items)
            g_log_a += (log_a - p.log_a_mean) / p.log_a_sd**2
            value += float(np.sum((log_a - p.log_a_mean) ** 2)) / (2 * p.log_a_sd**2)
            parts.append(g_log_a)
        return value, np.concatenate(parts)


def _sum_by(
    index: NDArray[np.intp], weights: NDArray[np.float64], size: int
) -> NDArray[np.float64]:
    """Sum `weights` per value of `index` (0 .. size-1)."""
    return np.bincount(index, weights, size).astype(np.float64)


def _start(responses: Responses, model: Model) -> NDArray[np.float64]:
    """Start from logits of success rates: close to the answer, so L-BFGS converges fast."""
    seen, y = responses.observed, np.nan_to_num(responses.scores)
    n_s, n_i = seen.sum(axis=1), seen.sum(axis=0)
    rate_s = (y.sum(axis=1) + 0.5) / (n_s + 1.0)
    rate_i = (y.sum(axis=0) + 0.5) / (n_i + 1.0)
    theta = np.log(rate_s / (1 - rate_s))
    theta = (theta - theta.mean()) / (theta.std() or 1.0)
    b = -np.log(rate_i / (1 - rate_i))
    parts = [theta, b] + ([np.zeros(len(b))] if model == "2pl" else [])
    return np.concatenate(parts)


def _minimize(
    objective: _Objective, x0: NDArray[np.float64], max_iter: int, tol: float
) -> tuple[NDArray[np.float64], float, bool, int]:
    from scipy.optimize import minimize

    result = minimize(
        objective,
        x0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-10, "maxcor": 20},
    )
    return result.x, float(result.fun), bool(result.success), int(result.nit)


def fit_irt(
    responses: Responses,
    *,
    model: Model = "2pl",
    priors: Priors | None = None,
    max_iter: int = 5000,
    tol: float = 1e-5,
    weights: NDArray[np.float64] | None = None,
    start: IRTFit | None = None,
) -> IRTFit:
    """Fit a 1PL or 2PL model by maximum a posteriori; missing cells are skipped.

    `weights` (subjects × items, >= 0) count each observed response that many times (the
    bootstrap uses it); `start` warm-starts from an earlier fit of the same matrix.
    """
    if model not in ("1pl", "2pl"):
        raise UsageError(f"Unknown IRT model {model!r}; use '1pl' or '2pl'.")
    if not responses.subjects or not responses.items:
        raise UsageError("The response matrix is empty: nothing to fit.")
    began = time.perf_counter()
    priors = priors or Priors()
    objective = _Objective(responses, model, weights)
    if start is not None:
        x = np.concatenate([start.theta, start.b] + ([np.log(start.a)] if model == "2pl" else []))
    else:
        x = _start(responses, model)
    current = priors
    rounds = priors.rounds if priors.hierarchical else 1
    value, converged, iterations = math.inf, False, 0
    for round_ in range(rounds):
        objective.priors = current
        x, value, converged, used = _minimize(objective, x, max_iter, tol)
        iterations += used
        if round_ + 1 < rounds:
            _, b, log_a = objective.split(x)
            current = replace(
                current,
                b_mean=float(b.mean()),
                b_sd=max(float(b.std()), 0.5),
                log_a_mean=float(log_a.mean()) if model == "2pl" else current.log_a_mean,
                log_a_sd=max(float(log_a.std()), 0.25) if model == "2pl" else current.log_a_sd,
            )
    theta, b, log_a = objective.split(x)
    return IRTFit(
        model=model,
        subjects=list(responses.subjects),
        items=list(responses.items),
        theta=theta.copy(),
        b=b.copy(),
        a=np.exp(log_a),
        priors=current,
        neg_log_posterior=value,
        converged=converged,
        seconds=time.perf_counter() - began,
        iterations=iterations,
    )


@dataclass
class Bootstrap:
    """Parameters refitted on resampled responses: `theta[k]`, `b[k]` for replicate k."""

    fit: IRTFit
    theta: NDArray[np.float64]
    b: NDArray[np.float64]
    a: NDArray[np.float64]
    seconds: float = 0.0
    level: float = field(default=0.9)

    def interval(self, values: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
        """Per-column (low, high) percentile interval at `level`."""
        tail = 100 * (1 - self.level) / 2
        low, high = np.percentile(values, [tail, 100 - tail], axis=0)
        return low, high

    def ability_intervals(self) -> dict[str, tuple[float, float]]:
        low, high = self.interval(self.theta)
        return {
            s: (float(lo), float(hi))
            for s, lo, hi in zip(self.fit.subjects, low, high, strict=True)
        }

    def difficulty_intervals(self) -> dict[str, tuple[float, float]]:
        low, high = self.interval(self.b)
        return {
            i: (float(lo), float(hi)) for i, lo, hi in zip(self.fit.items, low, high, strict=True)
        }


def bootstrap(
    responses: Responses,
    fit: IRTFit,
    *,
    n: int = 100,
    seed: int = 0,
    level: float = 0.9,
) -> Bootstrap:
    """Refit `n` times with Poisson(1) weights on observed responses (the Poisson bootstrap).

    Each replicate keeps every subject and item, so every parameter gets an interval; the
    priors are the ones the point fit ended with, held fixed, and each refit starts from it.
    """
    if n < 2:
        raise UsageError("A bootstrap needs at least 2 replicates (n >= 2).")
    began = time.perf_counter()
    rng = np.random.default_rng(seed)
    fixed = replace(fit.priors, hierarchical=False)
    thetas, bs, as_ = [], [], []
    for _ in range(n):
        weights = rng.poisson(1.0, size=responses.scores.shape).astype(float)
        replicate = fit_irt(responses, model=fit.model, priors=fixed, weights=weights, start=fit)
        thetas.append(replicate.theta)
        bs.append(replicate.b)
        as_.append(replicate.a)
    return Bootstrap(
        fit=fit,
        theta=np.array(thetas),
        b=np.array(bs),
        a=np.array(as_),
        seconds=time.perf_counter() - began,
        level=level,
    )
