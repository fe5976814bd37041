"""IRT fits on simulated data recover the parameters that generated it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import check_grad
from scipy.stats import spearmanr

from tapeagents.errors import UsageError
from tapeagents.eval import Priors, Responses, bootstrap, fit_irt, read_responses
from tapeagents.eval.irt import _Objective  # noqa: PLC2701 (checks the gradient it computes)


def simulate(
    subjects: int = 80, items: int = 300, missing: float = 0.5, seed: int = 0
) -> tuple[Responses, np.ndarray, np.ndarray, np.ndarray]:
    """0/1 responses drawn from a 2PL model, about `missing` of them left out."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 1, subjects)
    b = rng.normal(0, 1.5, items)
    a = np.exp(rng.normal(0, 0.3, items))
    p = 1 / (1 + np.exp(-a * (theta[:, None] - b)))
    y = (rng.random(p.shape) < p).astype(float)
    y[rng.random(p.shape) < missing] = np.nan
    responses = Responses(
        subjects=[f"s{k}" for k in range(subjects)], items=[f"i{k}" for k in range(items)], scores=y
    )
    return responses, theta, b, a


def test_2pl_recovers_difficulties_and_abilities_from_half_missing_data() -> None:
    responses, theta, b, _ = simulate()
    began = time.perf_counter()
    fit = fit_irt(responses)
    seconds = time.perf_counter() - began
    assert fit.converged
    assert spearmanr(fit.b, b).statistic >= 0.95
    assert spearmanr(fit.theta, theta).statistic >= 0.95
    assert seconds < 5.0


def test_1pl_and_hierarchical_priors_recover_difficulties_too() -> None:
    responses, _, b, _ = simulate(seed=1)
    assert spearmanr(fit_irt(responses, model="1pl").b, b).statistic >= 0.95
    hierarchical = fit_irt(responses, priors=Priors(hierarchical=True))
    assert spearmanr(hierarchical.b, b).statistic >= 0.95
    assert hierarchical.priors.b_sd != Priors().b_sd  # re-estimated from the fit


def test_the_gradient_matches_finite_differences() -> None:
    responses, *_ = simulate(subjects=8, items=12, seed=2)
    for model in ("1pl", "2pl"):
        objective = _Objective(responses, model, None)
        x = np.random.default_rng(3).normal(0, 0.5, 8 + 12 * (2 if model == "2pl" else 1))
        error = check_grad(lambda v, f=objective: f(v)[0], lambda v, f=objective: f(v)[1], x)
        assert error < 1e-4, model


def test_fractional_scores_are_means_of_several_tapes() -> None:
    scores = np.array([[1.0, 0.5, np.nan], [0.0, 0.25, 1.0]])
    fit = fit_irt(Responses(subjects=["a", "b"], items=["x", "y", "z"], scores=scores))
    assert fit.converged and np.all(np.isfinite(fit.b))
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        Responses(subjects=["a"], items=["x"], scores=np.array([[2.0]]))


def test_bootstrap_intervals_cover_the_true_difficulties() -> None:
    responses, _, b, _ = simulate(subjects=40, items=50, missing=0.3, seed=4)
    fit = fit_irt(responses)
    boot = bootstrap(responses, fit, n=12, seed=0)
    intervals = boot.difficulty_intervals()
    assert set(intervals) == set(fit.items)
    width = np.array([hi - lo for lo, hi in intervals.values()])
    assert np.all(width > 0)
    # b is identified up to the priors' scale: compare ranks of the truth with the interval
    low, high = boot.interval(boot.b)
    assert np.mean((fit.b >= low) & (fit.b <= high)) > 0.8
    assert spearmanr(fit.b, b).statistic > 0.9


def test_fit_lookups_and_csv(tmp_path: Path) -> None:
    responses, *_ = simulate(subjects=10, items=20, seed=5)
    fit = fit_irt(responses)
    assert fit.difficulty("i3") == fit.difficulties()["i3"]
    assert 0.0 < fit.probability("s0", "i3") < 1.0
    with pytest.raises(UsageError, match="Unknown item 'nope'"):
        fit.difficulty("nope")
    fit.write_csv(tmp_path / "items.csv", tmp_path / "subjects.csv")
    assert (tmp_path / "items.csv").read_text().splitlines()[0] == "item,a,b"
    assert len((tmp_path / "subjects.csv").read_text().splitlines()) == 11


def test_pyirt_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    lines = [
        {"subject_id": "m1", "responses": {"t1": 1, "t2": 0}},
        {"subject_id": "m2", "responses": {"t2": 1, "t3": 0}},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    responses = read_responses(path)
    assert responses.subjects == ["m1", "m2"] and responses.items == ["t1", "t2", "t3"]
    assert np.isnan(responses.scores[0, 2]) and responses.scores[1, 1] == 1.0
    assert responses.density == pytest.approx(4 / 6)
    responses.write_pyirt_jsonl(tmp_path / "again.jsonl")
    again = read_responses(tmp_path / "again.jsonl")
    assert np.array_equal(
        np.nan_to_num(again.scores, nan=-1), np.nan_to_num(responses.scores, nan=-1)
    )


def test_unknown_files_say_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        read_responses(tmp_path / "missing.jsonl")
    odd = tmp_path / "m.txt"
    odd.write_text("hello\n")
    with pytest.raises(UsageError, match="Cannot tell the format"):
        read_responses(odd)


def test_import_tapeagents_and_its_cli_load_no_numerics() -> None:
    code = (
        "import sys, tapeagents, tapeagents.cli\n"
        "heavy = {m.split('.')[0] for m in sys.modules} & {'numpy', 'scipy', 'matplotlib'}\n"
        "print(sorted(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
