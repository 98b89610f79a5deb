"""The metric contract and the registry.

A :class:`Metric` scores one prediction against one reference (``score``) and, the contract that
decisions use, fills a whole matrix at once (``pairwise``). Subclasses that can vectorise override
``pairwise``; the base class falls back to a per-pair loop so that any callable is a metric.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from metricwise.errors import InvalidParameterError
from metricwise.io import json_or_text
from metricwise.registry import Registry

if TYPE_CHECKING:
    from metricwise.metrics.overlap import NgramStatistics

MetricKind = Literal["text", "number"]


class Metric:
    """A utility (``higher_is_better=True``) or a loss (``False``) between two answers.

    Class attributes
    ----------------
    name:
        Registry name, set by :func:`register` (a subclass does not write it).
    higher_is_better:
        Direction; decision rules read it and never guess a sign.
    kind:
        ``"text"``: inputs are strings. ``"number"``: inputs are floats, and string samples are
        parsed with :func:`metricwise.extract.parse_number` before deciding.
    symmetric:
        Whether ``score(a, b) == score(b, a)`` for all inputs (checked by the property tests).
    bayes_rule:
        Name of the closed-form decision rule that is Bayes-optimal for this metric
        (``"mode"``, ``"mean"``, ``"median"``, ``"quantile"``), or ``None`` for MBR.
    pointwise:
        Whether ``score(c, y)`` does not depend on ``y``: the metric scores one answer (a
        reward model, a judge without a reference) through :meth:`pointwise_scores`. MBR with
        such a metric collapses to best-of-N, so :func:`metricwise.decide` returns the argmax
        of the pointwise scores over the hypotheses without building a pairwise matrix.
    """

    name: str = "metric"
    higher_is_better: bool = True
    kind: MetricKind = "text"
    symmetric: bool = True
    bayes_rule: str | None = None
    pointwise: bool = False

    # -- the per-pair definition -------------------------------------------------------------
    def _score_one(self, pred: Any, ref: Any) -> float:
        raise NotImplementedError

    def score(self, pred: Any, ref: Any) -> float:
        """Score ``pred`` against ``ref``; a list of references gives the best of them.

        "Best" is the maximum for utilities and the minimum for losses, as in the SQuAD
        evaluation (max over gold answers).
        """
        if isinstance(ref, (list, tuple)):
            if not ref:
                raise InvalidParameterError(
                    f"The 'ref' parameter of {self.name}.score must not be an empty list."
                )
            values = [self._score_one(pred, r) for r in ref]
            return max(values) if self.higher_is_better else min(values)
        return self._score_one(pred, ref)

    # -- the matrix contract -----------------------------------------------------------------
    def pairwise(self, cands: Sequence[Any], refs: Sequence[Any]) -> np.ndarray:
        """Return the (C, R) float64 matrix ``M[i, j] = score(cands[i], refs[j])``.

        This fallback makes C x R calls of ``_score_one``; metrics that can do better override it.
        """
        out = np.empty((len(cands), len(refs)), dtype=np.float64)
        for i, c in enumerate(cands):
            for j, r in enumerate(refs):
                out[i, j] = self._score_one(c, r)
        return out

    def pointwise_scores(self, cands: Sequence[Any], *, context: str | None = None) -> np.ndarray:
        """Shape (C,) float64: the score of each candidate alone, for a ``pointwise`` metric.

        ``context`` is the question the candidates answer (the prompt), for a metric that reads
        it; :func:`metricwise.decide` passes its ``context`` argument (by default the
        ``SampleSet``'s prompt). Only metrics with ``pointwise = True`` implement it.
        """
        raise NotImplementedError(f"The metric {self.name!r} is not pointwise.")

    def _pairwise_deduplicated(
        self,
        cands: Sequence[Any],
        refs: Sequence[Any],
        unique_fn: Callable[[list[Any], list[Any]], np.ndarray],
    ) -> np.ndarray:
        """Compute ``unique_fn`` on the distinct inputs only, then expand to the full (C, R) matrix.

        Sampled answers repeat a lot (that is what a confident model does), so scoring distinct
        strings first divides the work by the square of the duplication factor.
        """
        from metricwise.metrics.overlap import dedupe

        ucands, ci = dedupe(list(cands))
        urefs, ri = dedupe(list(refs))
        unique = unique_fn(ucands, urefs)
        return unique[np.ix_(ci, ri)]

    def normalize(self, value: Any) -> Any:
        """Key under which two answers count as the same (used by the ``mode`` rule)."""
        return value

    def signature(self) -> str:
        """A short string naming the metric and its settings, for reproducible reports."""
        return self.name

    def __repr__(self) -> str:
        return f"<Metric {self.signature()} ({'higher' if self.higher_is_better else 'lower'} is better)>"


class StatisticsMetric(Metric):
    """A metric with sufficient statistics (chrF, BLEU, token F1), as sacrebleu keeps them.

    :meth:`statistics` computes each text's n-gram counts once; :meth:`pairwise_statistics`
    compares any rows of one such call, so MBR over hypotheses and samples, pruning's growing
    reference sets and the exact stage of ``aggregate_to_fine`` reuse them. ``pairwise`` is
    defined here once, over the distinct texts. :func:`metricwise.decide` dispatches on this
    class, never on attribute probes.
    """

    def statistics(self, texts: Sequence[Any]) -> NgramStatistics:
        """The statistics of ``texts``, numbered alike for all (compare rows of one call)."""
        raise NotImplementedError

    def pairwise_statistics(self, cand: NgramStatistics, ref: NgramStatistics) -> np.ndarray:
        """(C, R) scores from the statistics of C candidates and R references, both from one
        :meth:`statistics` call (or its ``take``); the same object twice is symmetric."""
        raise NotImplementedError

    def pairwise(self, cands: Sequence[Any], refs: Sequence[Any]) -> np.ndarray:
        """Return the (C, R) float64 matrix ``M[i, j] = score(cands[i], refs[j])``."""
        return self._pairwise_deduplicated(cands, refs, self._pairwise_unique)

    def _pairwise_unique(self, cands: list[Any], refs: list[Any]) -> np.ndarray:
        if cands == refs:
            stats = self.statistics(cands)
            return self.pairwise_statistics(stats, stats)
        # Candidates and references are numbered together, so that their n-grams compare.
        stats = self.statistics([*cands, *refs])
        n_c = len(cands)
        return self.pairwise_statistics(
            stats.take(np.arange(n_c)), stats.take(np.arange(n_c, n_c + len(refs)))
        )


class AggregatableMetric(StatisticsMetric):
    """A :class:`StatisticsMetric` whose references can be averaged into one (chrF): what
    ``decide(..., mbr="aggregate")`` and ``"aggregate_to_fine"`` need."""

    def aggregate_statistics(
        self, cand: NgramStatistics, ref: NgramStatistics, weights: np.ndarray
    ) -> np.ndarray:
        """Shape (C,): each candidate's score against the ``weights``-average of the references."""
        raise NotImplementedError


class CallableMetric(Metric):
    """Wrap a user's function ``u(candidate, reference) -> float`` as a :class:`Metric`.

    Parameters
    ----------
    fn:
        The function. It is called once per pair (C x R calls for MBR).
    higher_is_better:
        Required: the direction of ``fn``.
    name:
        Name used in reports; defaults to the function's ``__name__``.
    numeric:
        Parse samples as numbers before calling ``fn`` (the metric's ``kind`` is ``"number"``).
    symmetric:
        Declare ``fn(a, b) == fn(b, a)``. Only halves nothing today; recorded for the tests.
    """

    def __init__(
        self,
        fn: Callable[[Any, Any], float],
        *,
        higher_is_better: bool,
        name: str | None = None,
        numeric: bool = False,
        symmetric: bool = False,
    ) -> None:
        if not callable(fn):
            raise InvalidParameterError(
                f"The 'fn' parameter of CallableMetric must be callable. Got {fn!r} instead."
            )
        if not isinstance(higher_is_better, bool):
            raise InvalidParameterError(
                "The 'higher_is_better' parameter must be given as True or False when the metric is a "
                f"plain callable. Got {higher_is_better!r} instead."
            )
        self._fn = fn
        self.higher_is_better = higher_is_better
        self.kind = "number" if numeric else "text"
        self.symmetric = symmetric
        self.name = str(name or getattr(fn, "__name__", "callable"))

    def _score_one(self, pred: Any, ref: Any) -> float:
        return float(self._fn(pred, ref))

    def signature(self) -> str:
        return f"callable:{self.name}"


MetricFactory = Callable[..., Metric]
_Factory = TypeVar("_Factory", bound=MetricFactory)


def _named(name: str, factory: MetricFactory) -> MetricFactory:
    """On a :class:`Metric` subclass, set the class attribute ``name`` (a class that sets a
    different one itself is refused: its results would be signed with a name that :func:`get`
    does not know)."""
    if isinstance(factory, type) and issubclass(factory, Metric):
        own = factory.__dict__.get("name")
        if own is not None and own != name:
            raise InvalidParameterError(
                f"The metric class {factory.__qualname__} sets name = {own!r} but is registered "
                f"as {name!r}. Remove its name attribute: register sets it."
            )
        factory.name = name
    return factory


#: The metrics: every module of :mod:`metricwise.metrics`, then the ``metricwise.metrics``
#: entry points of installed plugins (see :mod:`metricwise.registry`).
METRICS: Registry[MetricFactory] = Registry("metric", "metricwise.metrics", prepare=_named)


def register(name: str) -> Callable[[_Factory], _Factory]:
    """Decorator that registers a metric class (or factory) under ``name``; refuses duplicates.

    On a :class:`Metric` subclass it also sets the class attribute ``name``, so the name is
    written once: a class that sets a different ``name`` itself is refused (the report would
    otherwise sign its results with a name that :func:`get` does not know). The factory is
    called with the metric's keyword arguments (for example ``tau`` for ``pinball``) by
    :func:`get`.

    Examples
    --------
    >>> @register("doc_length_gap")  # doctest: +SKIP
    ... class LengthGap(Metric):
    ...     higher_is_better = False
    ...     def _score_one(self, pred, ref):
    ...         return abs(len(pred) - len(ref))
    """
    if not isinstance(name, str) or not name:
        raise InvalidParameterError(
            f"The 'name' parameter of register must be a non-empty string. Got {name!r} instead."
        )

    def decorator(factory: _Factory) -> _Factory:
        METRICS.add(name, factory)
        return factory

    return decorator


def names() -> list[str]:
    """Sorted names of all registered metrics."""
    return METRICS.names()


@dataclass(frozen=True)
class MetricInfo:
    """What a registered metric declares, read without building it (no model is loaded)."""

    name: str
    higher_is_better: bool
    bayes_rule: str | None
    kind: str
    summary: str


def describe(name: str) -> MetricInfo:
    """The declared direction, rule, kind and first docstring line of the registered metric
    ``name``, read from its class: ``metricwise metrics`` and test collection list every metric
    without building the model-based ones (a factory that is not a class is built)."""
    factory = METRICS.get(name)
    source: Any = factory if isinstance(factory, type) else factory()
    return MetricInfo(
        name=name,
        higher_is_better=bool(source.higher_is_better),
        bayes_rule=source.bayes_rule,
        kind=str(source.kind),
        summary=((source.__doc__ or "").strip().splitlines() or [""])[0],
    )


_SPEC = re.compile(r"(?P<name>[A-Za-z_]\w*)\((?P<args>.*)\)", re.DOTALL)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split a metric spec into its name and arguments.

    ``"reward(model=/models/rm, batch_size=8)"`` is ``("reward", {"model": "/models/rm",
    "batch_size": 8})``; a plain name has no arguments. Values are read as JSON where they
    are (numbers, ``true``, ``"quoted"``, ``[" ", "x"]``), else as strings; arguments are
    separated by the commas outside brackets and double quotes, so a JSON list or a quoted
    string may hold commas (``lm_eval(regexes_to_ignore=[",", "\\$"])``). This is how a metric that needs an argument (a model) is named
    where only a name fits: a YAML task's ``metrics`` and ``eval --mbr_metrics``.
    """
    match = _SPEC.fullmatch(spec.strip())
    if match is None:
        if "(" in spec or ")" in spec:
            raise InvalidParameterError(
                f"The metric spec {spec!r} is malformed: expected a name, or a name with "
                "arguments in one pair of parentheses, such as chrf(word_order=2)."
            )
        return spec, {}
    args: dict[str, Any] = {}
    for item in (part.strip() for part in _top_level_split(match["args"]) if part.strip()):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise InvalidParameterError(
                f"The arguments of metric spec {spec!r} must be key=value pairs. Got {item!r} instead."
            )
        args[key.strip()] = json_or_text(raw.strip())
    return match["name"], args


def _top_level_split(text: str) -> list[str]:
    """``text`` split at the commas outside ``[]``, ``{}``, ``()`` and double-quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    depth, quoted, escaped = 0, False, False
    for char in text:
        if quoted:
            quoted = escaped or char != '"'
            escaped = not escaped and char == "\\"
        elif char == '"':
            quoted = True
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def split_specs(text: str) -> list[str]:
    """Split a comma-separated list of metric specs, keeping the commas inside parentheses.

    ``"chrf(word_order=2,char_order=4),bleu"`` is ``["chrf(word_order=2,char_order=4)",
    "bleu"]``; empty items are dropped.
    """
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def get(name: str, **kwargs: Any) -> Metric:
    """Instantiate the registered metric ``name`` with its keyword arguments.

    ``name`` may carry arguments (``"reward(model=/models/rm)"``, see :func:`parse_spec`);
    keyword arguments given here override them.
    """
    name, spec_args = parse_spec(name)
    kwargs = {**spec_args, **kwargs}
    factory = METRICS.get(name)
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise InvalidParameterError(f"Bad arguments for metric {name!r}: {exc}.") from None


def resolve(
    metric: str | Metric | Callable[[Any, Any], float],
    *,
    higher_is_better: bool | None = None,
    **kwargs: Any,
) -> Metric:
    """Turn a metric name, a :class:`Metric` or a plain callable into a :class:`Metric`."""
    if isinstance(metric, Metric):
        if kwargs:
            raise InvalidParameterError(
                f"Metric arguments {sorted(kwargs)} were given with an already built metric {metric!r}; "
                "pass them to its constructor instead."
            )
        return metric
    if isinstance(metric, str):
        return get(metric, **kwargs)
    if callable(metric):
        if higher_is_better is None:
            raise InvalidParameterError(
                "The 'higher_is_better' parameter is required when the metric is a plain callable "
                "(True for a utility such as F1, False for a loss). Got None instead."
            )
        return CallableMetric(metric, higher_is_better=higher_is_better, **kwargs)
    raise InvalidParameterError(
        f"The 'metric' parameter must be a registered name, a Metric or a callable. Got {metric!r} instead."
    )
