"""From difficulties to human time: the BRIDGE line, predicted minutes and time horizons.

BRIDGE (arXiv 2602.07267) finds that IRT difficulty is linear in the log of the time a human
needs for the task. `fit_time_line` regresses ln(minutes) on difficulty over the items that have
human times; the line then gives minutes for items without them (`TimeLine.minutes`) and, since
a subject succeeds half the time on items whose difficulty equals its ability, the task length
it solves half the time: its 50% time horizon (`TimeLine.horizon`). Over release dates, the
frontier's horizons grow exponentially; `horizon_trend` fits the doubling time with a bootstrap
interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

import numpy as np

from tapeagents.errors import UsageError
from tapeagents.eval.matrix import Responses

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "HorizonTrend",
    "TimeLine",
    "fit_time_line",
    "frontier",
    "horizon_trend",
    "logit_success_difficulty",
    "within_factor",
]


@dataclass(frozen=True)
class TimeLine:
    """ln(minutes) = intercept + slope * difficulty, fitted on items with human times."""

    slope: float
    intercept: float
    r2: float
    """Share of the variance of difficulty (equivalently of ln minutes) the line explains."""
    n: int

    def minutes(self, difficulty: float) -> float:
        """The human minutes the line predicts for an item of this difficulty."""
        return math.exp(self.intercept + self.slope * difficulty)

    def horizon(self, ability: float, *, p: float = 0.5, discrimination: float = 1.0) -> float:
        """Minutes of the tasks a subject of this ability solves with probability `p`.

        For p = 0.5 that is the length whose difficulty equals the ability, whatever the
        discrimination; other levels move it by logit(p) / discrimination.
        """
        if not 0.0 < p < 1.0:
            raise UsageError(f"p must lie strictly between 0 and 1, not {p}.")
        difficulty = ability - math.log(p / (1 - p)) / discrimination
        return self.minutes(difficulty)


def fit_time_line(
    difficulties: Mapping[str, float], minutes: Mapping[str, float], *, items: Sequence[str] = ()
) -> TimeLine:
    """Regress ln(minutes) on difficulty over `items` (default: every item in both mappings)."""
    chosen = list(items) or [i for i in difficulties if i in minutes]
    pairs = [(difficulties[i], minutes[i]) for i in chosen if minutes.get(i, 0) > 0]
    if len(pairs) < 3:
        raise UsageError(
            f"Only {len(pairs)} items have both a difficulty and a positive human time; "
            "the line needs at least 3 (check that the item ids match)."
        )
    b = np.array([d for d, _ in pairs])
    t = np.log([m for _, m in pairs])
    slope, intercept = np.polyfit(b, t, 1)
    r = float(np.corrcoef(b, t)[0, 1])
    return TimeLine(slope=float(slope), intercept=float(intercept), r2=r * r, n=len(pairs))


def logit_success_difficulty(responses: Responses) -> dict[str, float]:
    """The baseline BRIDGE compares against: the logit of each item's failure rate.

    Rates are smoothed by half a success and half a failure, so items nobody (or everybody)
    solved stay finite.
    """
    seen = responses.observed
    solved = np.nansum(responses.scores, axis=0)
    rate = (solved + 0.5) / (seen.sum(axis=0) + 1.0)
    values = np.log((1 - rate) / rate)
    return dict(zip(responses.items, values.tolist(), strict=True))


def within_factor(
    predicted: Mapping[str, float], actual: Mapping[str, float], factor: float = 2.0
) -> list[str]:
    """The items whose prediction lies within [actual / factor, actual * factor]."""
    return [
        i
        for i, p in predicted.items()
        if i in actual and actual[i] / factor <= p <= actual[i] * factor
    ]


def frontier(horizons: Mapping[str, float], released: Mapping[str, date]) -> list[str]:
    """The subjects that beat every subject released before them (the state of the art)."""
    dated = sorted((released[s], -h, s) for s, h in horizons.items() if s in released)
    best, chosen = -math.inf, []
    for _, negative, subject in dated:
        if -negative > best:
            best = -negative
            chosen.append(subject)
    return chosen


@dataclass(frozen=True)
class HorizonTrend:
    """ln(horizon) growing linearly with the release date: a constant doubling time."""

    subjects: list[str]
    doubling_months: float
    interval: tuple[float, float]
    """Bootstrap percentile interval of the doubling time, at `level`."""
    level: float
    per_year: float
    """Growth of ln(horizon) per year."""
    intercept: float
    """ln(horizon minutes) at `origin`."""
    origin: date

    def horizon_at(self, when: date) -> float:
        """The trend's horizon, in minutes, on a date."""
        years = (when - self.origin).days / 365.25
        return math.exp(self.intercept + self.per_year * years)


def _doubling(years: NDArray[np.float64], log_h: NDArray[np.float64]) -> tuple[float, float]:
    slope, intercept = np.polyfit(years, log_h, 1)
    months = 12 * math.log(2) / slope if slope > 0 else math.inf
    return months, float(intercept)


def horizon_trend(
    horizons: Mapping[str, float],
    released: Mapping[str, date],
    *,
    subjects: Sequence[str] | None = None,
    samples: int = 2000,
    level: float = 0.9,
    seed: int = 0,
) -> HorizonTrend:
    """Fit ln(horizon) against release date over `subjects` (default: the `frontier`).

    The interval comes from resampling those subjects with replacement and refitting.
    """
    chosen = list(subjects) if subjects is not None else frontier(horizons, released)
    chosen = [s for s in chosen if s in released and horizons.get(s, 0) > 0]
    if len(chosen) < 3:
        raise UsageError(
            f"Only {len(chosen)} subjects have a release date and a horizon; the trend needs "
            "at least 3 (give release dates for more subjects)."
        )
    origin = min(released[s] for s in chosen)
    years = np.array([(released[s] - origin).days / 365.25 for s in chosen])
    log_h = np.log([horizons[s] for s in chosen])
    months, intercept = _doubling(years, log_h)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(samples):
        pick = rng.integers(0, len(chosen), len(chosen))
        if np.ptp(years[pick]) == 0:
            continue
        draws.append(_doubling(years[pick], log_h[pick])[0])
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return HorizonTrend(
        subjects=chosen,
        doubling_months=months,
        interval=(float(low), float(high)),
        level=level,
        per_year=12 * math.log(2) / months if math.isfinite(months) else 0.0,
        intercept=intercept,
        origin=origin,
    )
