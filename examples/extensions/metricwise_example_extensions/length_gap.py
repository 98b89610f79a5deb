"""A metric: one module, one decorator (CONTRIBUTING.md, "Add a metric")."""

from metricwise.metrics.base import Metric, register


@register("length_gap")  # the name users pass; register also sets Metric.name
class LengthGap(Metric):
    """Absolute difference in characters; the lower the better (a loss)."""

    higher_is_better = False  # rules read the direction, never guess it

    def _score_one(self, pred, ref):
        return abs(len(str(pred)) - len(str(ref)))
