"""lm-evaluation-harness (``pip install 'metricwise[lm_eval]'``), both ways.

- :mod:`.samples`: lm-eval's ``--log_samples`` output (``samples_<task>_<time>.jsonl``) as input
  to ``metricwise decide``: every doc re-decided from its ``resps`` and scored with lm-eval's own
  metric against its ``target``.
- :mod:`.filters`: :class:`~.filters.MetricAwareFilter`, a filter for a task YAML's
  ``filter_list`` that picks the Bayes-optimal answer among a task's ``repeats``.

Nothing here imports ``lm_eval`` until a function that needs it runs, so that reading this
package costs nothing for users without the extra.
"""
