"""Evaluation science on tapes: IRT difficulty scales, anchored to human time (BRIDGE).

Build a subjects × items response matrix (from py-irt JSONL, the evaluation exporter's records
or matrix, or a tape store), fit a 1PL/2PL model, and map difficulty to human minutes:

    from tapeagents.eval import fit_irt, fit_time_line, read_responses

    responses = read_responses("all_a_pyirt.jsonl")
    fit = fit_irt(responses)                       # 2PL, MAP with normal priors
    line = fit_time_line(fit.difficulties(), human_minutes)
    line.minutes(fit.difficulty("some/new_task"))  # predicted human minutes
    line.horizon(fit.ability("gpt-4o"))            # the 50% time horizon, in minutes

numpy and scipy are needed (`pip install 'tapeagents[eval]'`); `import tapeagents` does not load
this package, so the core stays light. See docs/bridge.md.
"""

from tapeagents.eval.horizons import (
    HorizonTrend,
    TimeLine,
    fit_time_line,
    frontier,
    horizon_trend,
    logit_success_difficulty,
    within_factor,
)
from tapeagents.eval.irt import Bootstrap, IRTFit, Model, Priors, bootstrap, fit_irt
from tapeagents.eval.matrix import (
    Responses,
    from_records,
    from_response_matrix,
    from_store,
    read_pyirt_jsonl,
    read_responses,
)

__all__ = [
    "Bootstrap",
    "HorizonTrend",
    "IRTFit",
    "Model",
    "Priors",
    "Responses",
    "TimeLine",
    "bootstrap",
    "fit_irt",
    "fit_time_line",
    "from_records",
    "from_response_matrix",
    "from_store",
    "frontier",
    "horizon_trend",
    "logit_success_difficulty",
    "read_pyirt_jsonl",
    "read_responses",
    "within_factor",
]
