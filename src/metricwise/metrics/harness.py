"""lm-evaluation-harness's own per-doc metrics as a metricwise metric (``lm_eval``).

``lm_eval(metric=exact_match, ignore_case=true, regexes_to_ignore=[" "])`` scores an answer with
the function lm-eval registers under ``metric``, called with the arguments of the task's
``metric_list`` entry, as lm-eval's ``generate_until`` scoring calls it
(:func:`metricwise.integrations.lm_eval.samples.lm_eval_scorer`). ``metricwise eval`` gives
every lm-eval task it adapts this metric, so that greedy's score is lm-eval's number; the
Bayes-optimal answer for it is MBR with the same function (for exact match: the mode under
lm-eval's own normalisation, which is not metricwise's SQuAD-normalised ``exact_match``).

lm-eval is imported when the metric is built, never on discovery; without it the metric
cannot be built (``pip install 'metricwise[lm_eval]'``).
"""

from __future__ import annotations

from typing import Any

from metricwise.errors import InvalidParameterError
from metricwise.metrics.base import Metric, register


@register("lm_eval")
class LmEvalMetric(Metric):
    """lm-eval's registered per-doc metric (exact_match by default) with its arguments."""

    higher_is_better = True
    symmetric = False
    bayes_rule = None

    def __init__(self, metric: str = "exact_match", **arguments: Any) -> None:
        if not isinstance(metric, str) or not metric:
            raise InvalidParameterError(
                f"The 'metric' parameter of lm_eval must name a metric of lm-eval's registry. Got {metric!r} instead."
            )
        try:
            from metricwise.integrations.lm_eval.samples import lm_eval_scorer
        except ModuleNotFoundError as exc:  # pragma: no cover - the module is part of metricwise
            raise InvalidParameterError(str(exc)) from None
        try:
            import lm_eval  # noqa: F401
        except ModuleNotFoundError:
            raise InvalidParameterError(
                "The lm_eval metric needs lm-eval: pip install 'metricwise[lm_eval]'."
            ) from None
        declared = arguments.pop("higher_is_better", None)
        arguments.pop("aggregation", None)  # per-doc values; the harness aggregates by the mean
        self.metric = metric
        self.arguments = dict(arguments)
        config = {"metric_list": [{"metric": metric, **self.arguments}]}
        self._score = lm_eval_scorer(metric, config)
        direction = _higher_is_better(metric) if declared is None else bool(declared)
        if direction is not None:
            self.higher_is_better = direction

    def _score_one(self, pred: Any, ref: Any) -> float:
        # lm-eval's order: (target, answer); its answers are text.
        return self._score(ref, "" if pred is None else str(pred))

    def signature(self) -> str:
        args = ",".join(f"{k}={v!r}" for k, v in sorted(self.arguments.items()))
        return f"lm_eval:{self.metric}" + (f"({args})" if args else "")


def _higher_is_better(metric: str) -> bool | None:
    from lm_eval.api.registry import is_higher_better

    try:
        return bool(is_higher_better(metric))
    except Exception:
        return None
