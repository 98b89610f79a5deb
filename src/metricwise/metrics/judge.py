"""An LLM judge as a utility: a model from any metricwise backend rates an answer on 1..K.

``judge`` renders a judge prompt (the criteria, optional shots, the question, the reference
when there is one, the answer) and reads the judge model's score.

**Regression-aware (the default).** The score is the judge's *expected* rating, not its greedy
token: with ``l_k = log p(s_k | prompt)`` the teacher-forced log-probability (nats) of the score
string ``s_k`` ("1" .. "K", with a leading space after a prompt that ends in a non-space),

    p_k = exp(l_k) / sum_{j=1..K} exp(l_j)          (normalised over the K score strings)
    score = sum_{k=1..K} k p_k                       (in [1, K])

the Bayes-optimal rating under squared error, as everywhere else in metricwise (Lukasik et al.,
"Regression-aware inference with LLMs", 2024; applied to judges by Chiang et al., "Enhancing
LLM-as-a-judge via regression-aware fine-tuning" (RAFT), 2025). The normalisation conditions on
the judge answering with a score; the mass it puts on the score strings at all,
``sum_k exp(l_k)``, is kept as :attr:`Judgement.score_mass`. ``regression_aware=False`` gives
the greedy score instead: ``argmax_k l_k``, what greedy decoding returns whenever its first
token is a score (otherwise greedy decoding would be unparsable; the argmax over score strings
is the more favourable comparison).

**Where log-probabilities come from.** ``hf`` and ``llamacpp`` compute ``l_k`` exactly (one
forward pass per prompt when every score string is one token); ``openai`` reads it from the
top log-probabilities of a one-token completion (a score string not listed gets ``-inf``; see
:meth:`metricwise.backends.openai.OpenAIBackend.continuation_logprobs`). A backend or server
that gives none makes the judge **sample** ``samples`` judgements (temperature 1,
``max_tokens`` 8) and average the parsed ratings (the first number in each, kept when it lies
in [1, K]); unparsable judgements are left out and counted (:attr:`Judgement.n_parsed` of
:attr:`Judgement.n_total`). Greedy mode then decodes one judgement greedily.

**Unparsable.** A judgement with no usable rating (every sample unparsable, or no score string
among a server's listed tokens) has ``score`` None; as a utility it counts ``-inf``: it ranks
below every judged candidate, and best-of-N never picks it while another has a score. Never a
silent 0.

**Pointwise or pairwise.** Without a reference (``reference=False``, the default) the judge is
pointwise, ``u(c, y) = judge(question, c)``: MBR collapses to best-of-N, N judgements per
decision and no N x N matrix, and the question is ``decide``'s ``context`` (the prompt of the
``SampleSet``), as for ``reward``. With ``reference=True`` it is pairwise,
``u(c, y) = judge(question, c, reference=y)``: every (candidate, pseudo-reference) pair is
judged, N^2 judgements per decision (N(N-1) distinct); the question then is the ``question``
argument (the pairwise contract carries no context). Each distinct (question, candidate,
reference) is judged once and cached across decisions (see
:mod:`metricwise.metrics.model_based`).

**Explanations.** :meth:`Judge.explain` also generates a short explanation of a judgement: one
greedy decode of at most ``max_tokens`` (48) tokens after the prompt and the (rounded) score,
on top of the scoring pass, so about as costly as generating a 48-token answer.

**Specs.** ``spec=judge.yaml`` loads a prompt chosen by ``metricwise judge-calibrate`` (the
Active-Critic procedure in :mod:`metricwise.judge_calibrate`): its criteria, wording, shots,
scale, model and backend (arguments given explicitly override the spec's model and backend).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError, MissingDependencyError
from metricwise.metrics.base import register
from metricwise.metrics.model_based import (
    ModelUtility,
    check_device,
    check_positive_int,
    shared_model,
)

#: The judge's prompt without a calibrated spec: generic criteria (the "fixed-criteria" prompt
#: that judge-calibrate compares against).
GENERIC_CRITERIA = (
    "A good answer is correct, relevant to the question and complete; a bad one is wrong, "
    "off-topic or empty."
)
GENERIC_CRITERIA_REFERENCE = (
    "A good answer means the same as the reference answer: the closer it is in meaning to the "
    "reference, the higher the score."
)

#: Two wordings of the judge prompt. ``header`` is written once, ``item`` once per shot (with
#: its score after it) and once for the judged answer (the score follows it).
#: Header fields: {task}, {criteria}, {K}. Item fields: {question}, {reference_line},
#: {candidate}, {K}.
WORDINGS: dict[str, dict[str, str]] = {
    "rate": {
        "header": (
            "{task}You rate answers on a scale from 1 (worst) to {K} (best).\n"
            "Criteria: {criteria}\n\n"
        ),
        "item": "Question: {question}\n{reference_line}Answer: {candidate}\nScore (1-{K}):",
    },
    "grade": {
        "header": (
            "{task}Read the question and the answer, then grade the answer with a whole number "
            "from 1 to {K}. {criteria}\n\n"
        ),
        "item": "### Question\n{question}\n{reference_line}### Answer\n{candidate}\n### Grade:",
    },
}
_REFERENCE_LINES = {
    "rate": "Reference answer: {reference}\n",
    "grade": "### Reference\n{reference}\n",
}
_HEADER_FIELDS = {"task", "criteria", "K"}
_ITEM_FIELDS = {"question", "reference_line", "candidate", "K"}
_BACKENDS = ("hf", "llamacpp", "openai")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
SPEC_VERSION = 1


@dataclass(frozen=True)
class Judgement:
    """One judgement of an answer.

    Attributes
    ----------
    score:
        The rating in [1, K] (expected or greedy, see the module docstring); None when
        unparsable.
    probabilities:
        Shape (K,): ``p_k`` over the score strings 1..K (sums to 1), from log-probabilities or
        from the parsed samples' frequencies (rounded to the nearest integer); None when
        unparsable.
    score_mass:
        ``sum_k exp(l_k)``: the judge's probability of answering with a score at all (NaN
        when judged by samples).
    n_parsed, n_total:
        Judgements parsed, of those made: 1 of 1 for log-probabilities (0 of 1 when no score
        string was listed), ``samples`` for sampling.
    method:
        ``"logprobs"`` or ``"samples"``.
    explanation:
        The judge's short explanation (:meth:`Judge.explain` only).
    """

    score: float | None
    probabilities: tuple[float, ...] | None
    score_mass: float
    n_parsed: int
    n_total: int
    method: str
    explanation: str | None = None


@dataclass
class JudgeSpec:
    """A judge prompt and where it came from: what ``metricwise judge-calibrate`` writes.

    ``header`` and ``item`` are the templates (see :data:`WORDINGS`); ``shots`` are labelled
    examples shown before the judged answer, with their ``score`` on the judge's 1..K scale.
    """

    header: str = WORDINGS["rate"]["header"]
    item: str = WORDINGS["rate"]["item"]
    reference_line: str = _REFERENCE_LINES["rate"]
    criteria: str = GENERIC_CRITERIA
    task: str = ""
    shots: list[dict[str, Any]] = field(default_factory=list)
    scale: int = 5
    wording: str = "rate"
    model: str | None = None
    backend: str | None = None
    label_range: list[float] | None = None
    agreement: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_template(self.header, _HEADER_FIELDS, "header")
        check_template(self.item, _ITEM_FIELDS, "item")
        check_template(self.reference_line, {"reference"}, "reference_line")
        check_scale(self.scale, "JudgeSpec")
        for i, shot in enumerate(self.shots):
            if not isinstance(shot, dict) or "candidate" not in shot or "score" not in shot:
                raise InvalidParameterError(
                    f"Shot {i} of a judge spec must be a mapping with 'candidate' and 'score' "
                    f"(and 'question', 'reference'). Got {shot!r} instead."
                )

    def prompt_hash(self) -> str:
        """12 hex digits of SHA-256 over everything that changes the rendered prompt."""
        data = json.dumps(
            [self.header, self.item, self.reference_line, self.criteria, self.task, self.shots],
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(data.encode("utf-8")).hexdigest()[:12]

    def to_yaml(self, path: str | Path) -> None:
        """Write the spec as YAML (UTF-8)."""
        yaml = _yaml()
        data = {"metricwise_judge_spec": SPEC_VERSION, **asdict(self)}
        Path(path).write_text(
            yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100), encoding="utf-8"
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> JudgeSpec:
        """Read a spec written by :meth:`to_yaml`; a clear error for a missing or malformed file."""
        yaml = _yaml()
        p = Path(path).expanduser()
        if not p.is_file():
            raise InvalidParameterError(
                f"The 'spec' parameter of judge must be a judge spec YAML file (from metricwise "
                f"judge-calibrate). Got {str(path)!r} instead, which is not a file."
            )
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise InvalidParameterError(f"The judge spec {p} is not valid YAML: {exc}") from None
        if not isinstance(data, dict) or data.get("metricwise_judge_spec") != SPEC_VERSION:
            raise InvalidParameterError(
                f"The judge spec {p} must be a mapping with metricwise_judge_spec: {SPEC_VERSION} "
                "(written by metricwise judge-calibrate)."
            )
        data = dict(data)
        data.pop("metricwise_judge_spec")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidParameterError(
                f"The judge spec {p} has unknown fields {unknown}; expected some of {sorted(known)}."
            )
        return cls(**data)


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise MissingDependencyError(
            "Judge specs are YAML files: pip install 'metricwise[eval]' (or pyyaml)."
        ) from None
    return yaml


def check_template(template: object, allowed: set[str], name: str) -> str:
    """Raise unless ``template`` is a format string whose fields are all in ``allowed``."""
    import string

    if not isinstance(template, str):
        raise InvalidParameterError(
            f"The '{name}' template of a judge prompt must be a string. Got {template!r} instead."
        )
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise InvalidParameterError(
            f"The '{name}' template of a judge prompt is not a valid format string ({exc}). "
            f"Got {template!r} instead."
        ) from None
    unknown = fields - allowed
    if unknown:
        raise InvalidParameterError(
            f"The '{name}' template of a judge prompt may use the fields {sorted(allowed)}. "
            f"Got {sorted(unknown)} in {template!r} instead."
        )
    return template


def check_scale(scale: object, where: str) -> int:
    # At most 9: the score strings must not begin one another. Most tokenizers split digits
    # one by one, so log p(" 1") would hold the probability of " 10", " 11", ... too, and the
    # normalisation over the score strings would count those ratings twice.
    if isinstance(scale, bool) or not isinstance(scale, int) or not 2 <= scale <= 9:
        raise InvalidParameterError(
            f"The 'scale' parameter of {where} must be an int in [2, 9] (ratings 1..K of one "
            f"digit each: with K >= 10 the probability of '1' would include that of '10'). "
            f"Got {scale!r} instead."
        )
    return scale


def parse_rating(text: str, scale: int) -> float | None:
    """The first number in ``text`` when it lies in [1, scale]; None otherwise (unparsable)."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group())
    return value if 1.0 <= value <= scale else None


def expected_rating(logprobs: np.ndarray) -> tuple[float, np.ndarray, float]:
    """The regression-aware rating from log-probabilities ``l`` of the score strings 1..K.

    Parameters
    ----------
    logprobs : ndarray, shape (K,)
        ``l_k`` in nats; ``-inf`` for a score string with no probability (or not listed).

    Returns
    -------
    (score, p, mass)
        ``score = sum_k k p_k`` with ``p_k = exp(l_k) / sum_j exp(l_j)``, shape (K,) ``p``,
        and ``mass = sum_k exp(l_k)``. NaN score when every ``l_k`` is ``-inf``.
    """
    logprobs = np.asarray(logprobs, dtype=np.float64)
    top = float(np.max(logprobs))
    if not math.isfinite(top):
        return math.nan, np.full(logprobs.shape, math.nan), 0.0
    weights = np.exp(logprobs - top)
    total = float(weights.sum())
    p = weights / total
    return float(p @ np.arange(1, logprobs.size + 1)), p, float(math.exp(top) * total)


@register("judge")
class Judge(ModelUtility):
    """An LLM's rating of the answer on 1..K (expected over its score tokens); higher is better.

    Parameters
    ----------
    backend:
        ``"hf"`` (default), ``"llamacpp"`` or ``"openai"``, or a backend object (anything with
        ``sample``/``greedy``, and ``continuation_logprobs`` for regression-aware scoring).
    model:
        The judge model; default: the spec's model, else the backend's default
        (``gemma-3-270m`` for hf and llamacpp; for openai the model the server serves).
        ``smollm2-135m-instruct`` is the instruction-tuned model that ships offline.
    scale:
        K: ratings 1..K, 2 <= K <= 9 (default 5; a spec sets its own). One digit each, so that
        no score string begins another ("1" would hold the probability of "10").
    regression_aware:
        True (default): the expectation over the score strings' probabilities. False: the
        greedy score (see the module docstring).
    spec:
        Path of a judge spec YAML from ``metricwise judge-calibrate``.
    reference:
        False (default): pointwise (best-of-N under MBR). True: pairwise against the
        pseudo-reference (an N x N judge).
    question:
        The question for pairwise judgements (``reference=True``), which get no context.
    chat:
        ``"auto"`` (default): render the prompt as one user turn through the model's chat
        template when the backend has one (hf with a tokenizer that has ``chat_template``);
        True requires one; False never.
    samples:
        Judgements sampled per answer when the backend gives no log-probabilities.
    seed:
        Seed of those samples.
    base_url:
        The server for ``backend="openai"``.
    backend_options:
        More keyword arguments for the backend (e.g. ``{"n_threads": 1}`` for llamacpp).
    device, batch_size, progress:
        As for every model-based utility (``device`` is used by the hf backend).
    """

    higher_is_better = True
    symmetric = False

    def __init__(
        self,
        backend: Any = "hf",
        model: str | None = None,
        scale: int | None = None,
        regression_aware: bool = True,
        spec: str | Path | JudgeSpec | None = None,
        reference: bool = False,
        question: str | None = None,
        chat: bool | str = "auto",
        samples: int = 8,
        seed: int = 0,
        base_url: str | None = None,
        backend_options: dict[str, Any] | None = None,
        device: str = "cpu",
        batch_size: int = 8,
        progress: bool = True,
    ) -> None:
        # Not ModelUtility.__init__: llamacpp and openai judges need neither torch nor a device.
        self.batch_size = check_positive_int(batch_size, "batch_size", self.name)
        self.progress = bool(progress)
        if not isinstance(device, str):
            raise InvalidParameterError(
                f"The 'device' parameter of judge must be a torch device string. Got {device!r} instead."
            )
        self.device = device
        self.spec_path: str | None = None
        if isinstance(spec, (str, Path)):
            self.spec_path = str(spec)
            self.spec = JudgeSpec.from_yaml(spec)
        elif isinstance(spec, JudgeSpec):
            self.spec = spec
        elif spec is None:
            self.spec = _generic_spec(bool(reference), scale if scale is not None else 5)
        else:
            raise InvalidParameterError(
                f"The 'spec' parameter of judge must be a path to a judge spec YAML. Got {spec!r} instead."
            )
        if spec is not None and scale is not None and scale != self.spec.scale:
            raise InvalidParameterError(
                f"The 'scale' parameter of judge is {scale}, but the spec rates on 1..{self.spec.scale}. "
                "Leave scale out to use the spec's."
            )
        self.scale = self.spec.scale
        if not isinstance(regression_aware, bool):
            raise InvalidParameterError(
                f"The 'regression_aware' parameter of judge must be true or false. Got {regression_aware!r} instead."
            )
        self.regression_aware = regression_aware
        self.reference = bool(reference)
        self.pointwise = not self.reference
        if question is not None and not isinstance(question, str):
            raise InvalidParameterError(
                f"The 'question' parameter of judge must be a string. Got {question!r} instead."
            )
        self.question = question
        if chat not in ("auto", True, False):
            raise InvalidParameterError(
                f"The 'chat' parameter of judge must be 'auto', true or false. Got {chat!r} instead."
            )
        self.chat_option = chat
        self.samples = check_positive_int(samples, "samples", self.name)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidParameterError(
                f"The 'seed' parameter of judge must be an int. Got {seed!r} instead."
            )
        self.seed = seed
        options = dict(backend_options or {})
        if base_url is not None:
            options["base_url"] = base_url
        if isinstance(backend, str):
            if backend not in _BACKENDS:
                from metricwise.errors import UnknownNameError, did_you_mean

                raise UnknownNameError(
                    f"The 'backend' parameter of judge must be one of {', '.join(_BACKENDS)}. "
                    f"Got {backend!r} instead.{did_you_mean(backend, list(_BACKENDS))}"
                )
            self.backend_name = backend
            model = model if model is not None else self.spec.model
            if model is not None and not isinstance(model, str):
                raise InvalidParameterError(
                    f"The 'model' parameter of judge must be a model name or path. Got {model!r} instead."
                )
            if (
                backend == "openai"
                and "base_url" not in options
                and not (isinstance(model, str) and model.startswith(("http://", "https://")))
            ):
                raise InvalidParameterError(
                    "The 'base_url' parameter of judge is required with backend='openai' "
                    "(--metric_args backend=openai,base_url=http://127.0.0.1:8080 for --metric judge; "
                    "--model_args base_url=http://127.0.0.1:8080 for judge-calibrate). Got None instead."
                )
            if backend in ("hf", "llamacpp"):
                # Checked now (a name or a file), so that a wrong judge stops predict before
                # any sampling; the weights load on first use.
                from metricwise.models import DEFAULT_MODEL, resolve_model

                resolve_model(model if model is not None else DEFAULT_MODEL)
                if backend == "hf":
                    options.setdefault("device", check_device(device, self.name))
            self.model = model if model is not None else "default"
            self._backend_obj: Any = None
            key = ("judge", backend, str(model), json.dumps(options, sort_keys=True, default=str))
            self._backend_key = key
            self._options = options
        else:
            self.backend_name = type(backend).__name__
            self.model = str(getattr(backend, "signature", self.backend_name))
            self._backend_obj = backend
            self._backend_key = ("judge", "object", self.model, "")
            self._options = {}
        self._model_arg = model
        #: "logprobs" or "samples" once known; None until the first judgement.
        self._method: str | None = None
        self._lock = threading.Lock()

    # -- the backend --------------------------------------------------------------------------
    def backend(self) -> Any:
        """The judge's backend, loaded on first use and shared per process."""
        if self._backend_obj is None:
            from metricwise.backends.base import load_backend

            name, model, options = self.backend_name, self._model_arg, dict(self._options)
            self._backend_obj = shared_model(
                self._backend_key, lambda: load_backend(name, model, **options)
            )
        return self._backend_obj

    def _chat_tokenizer(self) -> Any:
        if self.chat_option is False:
            return None
        tokenizer = getattr(self.backend(), "tokenizer", None)
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer
        if self.chat_option is True:
            raise InvalidParameterError(
                f"The 'chat' parameter of judge is true, but the {self.backend_name} backend of "
                f"{self.model!r} has no chat template here. Got chat=True instead; use chat='auto'."
            )
        return None

    # -- prompts ------------------------------------------------------------------------------
    def render_body(self, question: str | None, candidate: str, reference: str | None) -> str:
        """The judge prompt's text before any chat template: header, shots, the judged item."""
        spec = self.spec
        header = spec.header.format(
            task=f"{spec.task.strip()}\n" if spec.task.strip() else "",
            criteria=spec.criteria.strip(),
            K=self.scale,
        )
        shots = "".join(
            self._item(shot.get("question"), str(shot["candidate"]), shot.get("reference"))
            + f" {_format_score(shot['score'])}\n\n"
            for shot in spec.shots
        )
        return header + shots + self._item(question, candidate, reference)

    def _item(self, question: str | None, candidate: str, reference: str | None) -> str:
        line = "" if reference is None else self.spec.reference_line.format(reference=reference)
        return self.spec.item.format(
            question=question if question is not None else "",
            reference_line=line,
            candidate=candidate,
            K=self.scale,
        )

    def render(self, question: str | None, candidate: str, reference: str | None) -> str:
        """The prompt the judge model reads; the rating follows it."""
        body = self.render_body(question, candidate, reference)
        tokenizer = self._chat_tokenizer()
        if tokenizer is None:
            return body
        turns = [{"role": "user", "content": body}]
        return str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))

    def score_strings(self, prompt: str) -> list[str]:
        """The K continuations read as ratings: "1".."K", with a space after a non-space."""
        space = " " if prompt and not prompt[-1].isspace() else ""
        return [f"{space}{k}" for k in range(1, self.scale + 1)]

    # -- judging --------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        chat = self.chat_option
        return {
            "backend": self.backend_name,
            "K": self.scale,
            "regression_aware": self.regression_aware,
            "reference": self.reference,
            "prompt": self.spec.prompt_hash(),
            "chat": chat,
            **({"samples": self.samples, "seed": self.seed} if self._method == "samples" else {}),
        }

    def _namespace(self) -> str:
        # Not the signature: samples and seed enter it only once the judge has found that it
        # samples (after its first judgements are keyed), and it names neither the server
        # (which model answers when none is named) nor the backend's options.
        return json.dumps(
            [
                self.name,
                *self._backend_key,
                self.scale,
                self.regression_aware,
                self.reference,
                self.spec.prompt_hash(),
                str(self.chat_option),
                self.samples,
                self.seed,
            ]
        )

    def judgements(
        self,
        candidates: Sequence[Any],
        question: str | None = None,
        references: Sequence[Any] | None = None,
    ) -> list[Judgement]:
        """One :class:`Judgement` per candidate (as the answer to ``question``, against
        ``references[i]`` when given), each distinct input judged once (cached)."""
        if references is not None and len(references) != len(candidates):
            raise InvalidParameterError(
                f"The 'references' parameter of judgements must have one reference per candidate "
                f"({len(candidates)}). Got {len(references)} instead."
            )
        return self.judge_items(
            [
                (question, c, None if references is None else references[i])
                for i, c in enumerate(candidates)
            ]
        )

    def judge_items(self, items: Sequence[tuple[str | None, Any, Any]]) -> list[Judgement]:
        """One :class:`Judgement` per ``(question, candidate, reference)`` (question and
        reference may be None), judged in batches of ``batch_size``, each distinct one once."""
        keys = [
            ("" if q is None else str(q), str(c), "\x00" if r is None else str(r))
            for q, c, r in items
        ]
        return self._cached(
            keys,
            self._judge_batch,
            lambda value: 256,
            f"judge: rating with {self.model}",
        )

    def _judge_batch(self, keys: list[tuple[str, ...]]) -> list[Judgement]:
        prompts = [self.render(q or None, c, None if r == "\x00" else r) for q, c, r in keys]
        if self._method != "samples":
            from metricwise.backends.base import LogprobsUnavailable, continuation_logprobs

            strings = [self.score_strings(p) for p in prompts]
            try:
                if all(s == strings[0] for s in strings):
                    table = continuation_logprobs(self.backend(), prompts, strings[0])
                else:
                    table = np.vstack(
                        [
                            continuation_logprobs(self.backend(), [p], s)
                            for p, s in zip(prompts, strings, strict=True)
                        ]
                    )
            except LogprobsUnavailable:
                self._method = "samples"
            else:
                self._method = "logprobs"
                return [self._from_logprobs(row) for row in table]
        return self._from_samples(prompts)

    def _from_logprobs(self, row: np.ndarray) -> Judgement:
        expected, p, mass = expected_rating(row)
        if math.isnan(expected):
            return Judgement(None, None, 0.0, 0, 1, "logprobs")
        score = expected if self.regression_aware else float(np.argmax(row) + 1)
        return Judgement(score, tuple(float(x) for x in p), mass, 1, 1, "logprobs")

    def _from_samples(self, prompts: list[str]) -> list[Judgement]:
        from metricwise.types import SamplingConfig

        backend = self.backend()
        if self.regression_aware:
            config = SamplingConfig(n=self.samples, temperature=1.0, max_tokens=8, seed=self.seed)
            texts = [[c.text for c in s.candidates] for s in backend.sample(prompts, config)]
        else:
            config = SamplingConfig(n=1, temperature=0.0, max_tokens=8, seed=self.seed)
            texts = [[c.text] for c in backend.greedy(prompts, config)]
        out = []
        for row in texts:
            ratings = [r for r in (parse_rating(t, self.scale) for t in row) if r is not None]
            if not ratings:
                out.append(Judgement(None, None, math.nan, 0, len(row), "samples"))
                continue
            counts = np.bincount(
                np.clip(np.rint(ratings).astype(int), 1, self.scale) - 1, minlength=self.scale
            )
            p = tuple(float(x) for x in counts / counts.sum())
            out.append(
                Judgement(float(np.mean(ratings)), p, math.nan, len(ratings), len(row), "samples")
            )
        return out

    def generate(self, body: str, *, max_tokens: int = 64, stop: Sequence[str] = ("\n",)) -> str:
        """Free text from the judge model after ``body`` (one user turn through the chat
        template when the judge uses one), greedy, at most ``max_tokens`` tokens."""
        from metricwise.types import SamplingConfig

        tokenizer = self._chat_tokenizer()
        prompt = body
        if tokenizer is not None:
            turns = [{"role": "user", "content": body}]
            prompt = str(
                tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            )
        config = SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens, stop=tuple(stop))
        return str(self.backend().greedy([prompt], config)[0].text).strip()

    def explain(
        self,
        candidate: Any,
        question: str | None = None,
        reference: Any = None,
        *,
        max_tokens: int = 48,
    ) -> Judgement:
        """The judgement of ``candidate`` with a short explanation generated by the judge.

        Cost: the (cached) judgement, plus one greedy decode of at most ``max_tokens`` tokens
        after the prompt, the rounded score and "Explanation:" (stopped at a blank line).
        """
        from metricwise.types import SamplingConfig

        check_positive_int(max_tokens, "max_tokens", "judge.explain")
        refs = None if reference is None else [reference]
        judgement = self.judgements([candidate], question, refs)[0]
        rating = "?" if judgement.score is None else str(round(judgement.score))
        body = self.render_body(
            question, str(candidate), None if reference is None else str(reference)
        )
        tokenizer = self._chat_tokenizer()
        if tokenizer is None:
            prompt = f"{body} {rating}\nExplanation:"
        else:
            turns = [
                {"role": "user", "content": body},
                {"role": "assistant", "content": rating},
                {"role": "user", "content": "Explain that score in one sentence."},
            ]
            prompt = str(
                tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            )
        config = SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens, stop=("\n\n",))
        text = self.backend().greedy([prompt], config)[0].text.strip()
        return Judgement(**{**asdict(judgement), "explanation": text})

    # -- the utility contract ----------------------------------------------------------------------
    def _values(self, judgements: list[Judgement]) -> np.ndarray:
        return np.array(
            [-math.inf if j.score is None else j.score for j in judgements], dtype=np.float64
        )

    def pointwise_scores(self, cands: Sequence[Any], *, context: str | None = None) -> np.ndarray:
        """Shape (C,) float64: each candidate's rating as the answer to ``context`` (the
        question; ``question`` when no context is given); ``-inf`` for an unparsable one."""
        question = context if context is not None else self.question
        return self._values(self.judgements(cands, question))

    def pairwise(self, cands: Sequence[Any], refs: Sequence[Any]) -> np.ndarray:
        """Shape (C, R): ``u(c, r)``; with ``reference=True`` the judge rates ``c`` against
        ``r`` (C x R judgements, each distinct pair once), otherwise each row repeats ``c``'s
        pointwise rating."""
        if not self.reference:
            return np.repeat(self.pointwise_scores(cands)[:, None], len(refs), axis=1)
        flat_c = [c for c in cands for _ in refs]
        flat_r = [r for _ in cands for r in refs]
        values = self._values(self.judgements(flat_c, self.question, flat_r))
        return values.reshape(len(cands), len(refs))

    def _score_one(self, pred: Any, ref: Any) -> float:
        return float(self.pairwise([pred], [ref])[0, 0])


def _generic_spec(reference: bool, scale: int) -> JudgeSpec:
    return JudgeSpec(
        criteria=GENERIC_CRITERIA_REFERENCE if reference else GENERIC_CRITERIA,
        scale=check_scale(scale, "judge"),
    )


def _format_score(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"
