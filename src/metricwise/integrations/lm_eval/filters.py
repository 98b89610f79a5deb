"""A metricwise filter for lm-eval task YAMLs: the Bayes-optimal answer among ``repeats``.

lm-eval's self-consistency recipe is ``repeats: N`` with a ``majority_vote`` filter: the mode,
which is the Bayes-optimal answer for exact match only. :class:`MetricAwareFilter` is the same
step for any metricwise metric (the mean for squared error, the median for absolute error, MBR
for token F1 or chrF, ...). A task YAML names it in its ``filter_list``, where lm-eval imports
it with its ``!function`` tag (no registration needed; the module must be importable)::

    repeats: 8
    filter_list:
      - name: metricwise-squared_error
        filter:
          - function: !function metricwise.integrations.lm_eval.filters.MetricAwareFilter
            metric: squared_error
            extractor: number
            valid_range: [0, 5]
          - function: take_first

Importing this module also registers the filter in lm-eval's filter registry as
``metricwise``, so that code that imports it first (``metricwise eval`` does) may write
``function: metricwise``.

Like ``majority_vote``, the filter turns each doc's responses into a one-element list, so
``take_first`` follows it. A number is returned as text ("5", not "5.0"; an extracted number
too: "12", not "12.0"), as lm-eval's metrics compare strings; a doc where no response could be
used (no number in any of them for ``squared_error``) gets the empty answer.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from lm_eval.api.filter import Filter
from lm_eval.api.registry import register_filter

from metricwise.integrations.lm_eval.samples import answer_text, is_numeric_extractor

__all__ = ["MetricAwareFilter"]


def _decide_options(
    metric: str, metric_args: dict[str, Any] | None, options: dict[str, Any]
) -> dict[str, Any]:
    from metricwise import metrics
    from metricwise.decide import decide

    out = dict(options)
    for key in ("valid_range", "grid"):
        if isinstance(out.get(key), list):
            out[key] = tuple(out[key])
    metric_args = dict(metric_args or {})
    if set(metric_args) & set(inspect.signature(decide).parameters):
        out["metric"] = metrics.get(metric, **metric_args)  # arguments named like decide's own
    else:
        out["metric"] = metric
        out.update(metric_args)
    decide([], **out)  # checks the metric, its arguments, the rule and the extractor now
    return out


@register_filter("metricwise")
class MetricAwareFilter(Filter):
    """Pick, for each doc, the answer among its responses that is Bayes-optimal for ``metric``.

    Parameters
    ----------
    metric:
        A metricwise metric name (``metricwise metrics`` lists them): ``exact_match`` gives
        the mode, ``squared_error`` the mean, ``absolute_error`` the median, others MBR.
    metric_args:
        The metric's arguments, e.g. ``{tau: 0.9}`` for ``pinball``.
    **options:
        Further arguments of :func:`metricwise.decide`: ``rule``, ``extractor``,
        ``valid_range``, ``grid``, ``include_incomplete``, ``mbr``. Weights are uniform: lm-eval
        keeps no log-probabilities of its generated responses.
    """

    def __init__(
        self, metric: str = "exact_match", metric_args: dict[str, Any] | None = None, **options: Any
    ) -> None:
        super().__init__()
        self.options = _decide_options(metric, metric_args, options)

    def decide(self, responses: Iterable[str]) -> str:
        """The decided answer of one doc's responses, as text ("" when none was usable)."""
        from metricwise.decide import decide

        numeric = is_numeric_extractor(self.options.get("extractor"))
        output = answer_text(decide(list(responses), **self.options).output, numeric=numeric)
        return "" if output is None else output

    def apply(self, resps: Iterable[list[str]], docs: list[dict[str, Any]]) -> list[list[str]]:
        return [[self.decide(r)] for r in resps]
