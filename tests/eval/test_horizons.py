"""Difficulty to minutes, time horizons and their trend over release dates."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pytest

from tapeagents.errors import UsageError
from tapeagents.eval import (
    Responses,
    fit_time_line,
    frontier,
    horizon_trend,
    logit_success_difficulty,
    within_factor,
)


def test_an_exact_line_is_recovered_and_inverted() -> None:
    minutes = {f"t{k}": float(2**k) for k in range(8)}
    difficulties = {t: (math.log(m) - 1.0) / 0.5 for t, m in minutes.items()}
    line = fit_time_line(difficulties, minutes)
    assert line.slope == pytest.approx(0.5) and line.intercept == pytest.approx(1.0)
    assert line.r2 == pytest.approx(1.0) and line.n == 8
    assert line.minutes(difficulties["t3"]) == pytest.approx(8.0)
    # a subject whose ability equals an item's difficulty solves it half the time
    assert line.horizon(difficulties["t5"]) == pytest.approx(32.0)
    # 80% success needs easier (shorter) tasks
    assert line.horizon(difficulties["t5"], p=0.8, discrimination=1.0) < 32.0


def test_the_line_needs_matching_items() -> None:
    with pytest.raises(UsageError, match="at least 3"):
        fit_time_line({"a": 1.0}, {"b": 3.0})


def test_logit_baseline_orders_items_by_failure_rate() -> None:
    scores = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, np.nan]])
    baseline = logit_success_difficulty(Responses(["a", "b", "c"], ["x", "y", "z"], scores))
    assert baseline["x"] < baseline["y"] < baseline["z"]
    assert all(math.isfinite(v) for v in baseline.values())


def test_within_factor_counts_predictions_in_the_band() -> None:
    actual = {"a": 10.0, "b": 10.0, "c": 10.0}
    assert within_factor({"a": 5.0, "b": 21.0, "c": 19.0}, actual) == ["a", "c"]


def test_frontier_and_doubling_time_on_a_six_month_trend() -> None:
    start = date(2020, 1, 1)
    rng = np.random.default_rng(0)
    released, horizons = {}, {}
    for k in range(30):
        when = start + timedelta(days=int(k * 60))
        released[f"m{k}"] = when
        years = (when - start).days / 365.25
        horizons[f"m{k}"] = math.exp(math.log(2) * years * 2 + rng.normal(0, 0.1))
        # laggards: released later, weaker; they must not enter the frontier
        released[f"lag{k}"] = when + timedelta(days=10)
        horizons[f"lag{k}"] = horizons[f"m{k}"] / 10
    chosen = frontier(horizons, released)
    assert not any(s.startswith("lag") for s in chosen)
    trend = horizon_trend(horizons, released, samples=500)
    assert trend.doubling_months == pytest.approx(6.0, rel=0.1)
    low, high = trend.interval
    assert low < trend.doubling_months < high
    assert trend.horizon_at(start + timedelta(days=365)) == pytest.approx(4.0, rel=0.2)


def test_a_trend_needs_three_dated_subjects() -> None:
    with pytest.raises(UsageError, match="release date"):
        horizon_trend({"a": 1.0, "b": 2.0}, {"a": date(2024, 1, 1)})
