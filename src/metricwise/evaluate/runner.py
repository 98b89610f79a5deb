"""The evaluation run: prompts -> greedy and N samples through the store -> every decoder scored.

Sampling is the only step that needs the model; it goes through the sample store, so an
interrupted run resumes and a second run with other decoders or metrics samples nothing.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from metricwise.adaptive import Adaptive
from metricwise.errors import InvalidParameterError
from metricwise.evaluate.decoders import Decoder, default_decoders, extractor_for
from metricwise.evaluate.scoring import ItemRecord, score_task
from metricwise.evaluate.stats import DEFAULT_BOOTSTRAP_ITERS, paired_bootstrap, resample_indices
from metricwise.global_decoding import (
    ChainSettings,
    chain_summary,
    check_chain_use,
    global_chains,
)
from metricwise.io import json_safe, write_json_line
from metricwise.metrics import get as get_metric
from metricwise.progress import Progress
from metricwise.tasks.base import Item
from metricwise.types import SampleSet, SamplingConfig


@dataclass
class EvalConfig:
    """Everything that defines an evaluation run (and its results' signatures).

    ``temperatures`` runs the whole pool once per temperature (a sweep); ``max_tokens=None``
    uses each task's own budget. ``bootstrap_iters`` is the number of bootstrap resamples
    (``--bootstrap_iters``).

    ``adaptive`` (``--adaptive``) adds an adaptive twin of every Bayes rule
    (:class:`~metricwise.evaluate.decoders.AdaptiveRule`): the pool is sampled to
    ``adaptive.max_n`` (``n`` is set to it) and each twin decides on the prefix of the pool at
    which its decision is settled. ``tolerance`` (``--tolerance``) is the twins' tolerance in
    each task's answer unit; None takes ``adaptive.tolerance`` when that is not 0, else each
    task's and rule's default (:func:`~metricwise.evaluate.decoders.default_tolerance`: 2% of
    a bounded range, 0.5 for unbounded numbers, 0 for mode and MBR).

    ``mbr_metrics`` (``--mbr_metrics``) adds an ``mbr[m]`` decoder for each utility ``m``
    beyond the task's own metrics (see :func:`~metricwise.evaluate.decoders.default_decoders`).

    ``decodings`` (``--decoding``) are ``"local"`` (the samples as drawn), ``"global"`` (the
    states of an independent Metropolis-Hastings chain over them, :mod:`metricwise.global_decoding`,
    with burn-in and thinning from ``chain``), or both: then one pool of
    ``chain.proposals(n)`` proposals is sampled, local decoders read its first ``n`` and global
    ones the chain's ``n`` states, and each global score carries its paired difference against
    the same decoder on local samples (``vs_local``).
    """

    model: str | None
    tasks: list[str]
    backend: str = "hf"
    model_args: dict[str, Any] = field(default_factory=dict)
    #: Items per task: the first ``limit``; below 1, that fraction of them, rounded up (as
    #: lm-eval's ``--limit`` reads it).
    limit: int | float | None = None
    n: int = 16
    #: Shots per prompt; None: 5 for metricwise's tasks, an lm-eval task's own setting.
    num_fewshot: int | None = None
    fewshot_strategy: str = "random"
    temperatures: list[float] = field(default_factory=lambda: [1.0])
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_tokens: int | None = None
    seed: int = 0
    data_dir: str | None = None
    output_path: str | None = None
    log_samples: bool = False
    store: str | None = None
    batch_size: int = 8
    bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS
    curve_subsets: int = 8
    plots: bool = True
    quiet: bool = False
    adaptive: Adaptive | None = None
    tolerance: float | None = None
    mbr_metrics: list[str] = field(default_factory=list)
    decodings: list[str] = field(default_factory=lambda: ["local"])
    chain: ChainSettings = field(default_factory=ChainSettings)
    #: Write an Inspect AI log per run under ``output_path/inspect`` (``--inspect_log``).
    inspect_log: bool = False
    #: lm-eval tasks (``--include_path``, lm-eval task YAMLs): where lm-eval finds them, the
    #: few-shot sampler's seed (``--seed``'s fourth value; lm-eval's default 1234), the
    #: generation settings that update their ``generation_kwargs`` and the chat template.
    include_path: str | None = None
    fewshot_seed: int | None = 1234
    lm_eval_gen_kwargs: dict[str, Any] = field(default_factory=dict)
    apply_chat_template: bool = False
    #: Also write lm-eval's layout (``<output_path>/<model>/results_<time>.json``, and
    #: ``samples_<task>_<time>.jsonl`` with log_samples), named as lm-eval names the model.
    lm_eval_model_name: str | None = None
    #: Stop strings for every task instead of its own (``--gen_kwargs until=...``).
    stop: list[str] | None = None

    @property
    def pool_size(self) -> int:
        """Samples drawn per item: ``n``, or the proposals a global chain of ``n`` states reads."""
        return self.chain.proposals(self.n) if "global" in self.decodings else self.n

    def __post_init__(self) -> None:
        if self.inspect_log:
            if not self.output_path:
                raise InvalidParameterError(
                    "The 'inspect_log' parameter of eval needs an output_path to write the logs under. Got None instead."
                )
            from metricwise.evaluate.inspect_log import _require_inspect

            _require_inspect()  # before the model loads and samples
        if not self.decodings or len(set(self.decodings)) != len(self.decodings):
            raise InvalidParameterError(
                f"The 'decodings' parameter of eval must name local, global or both, once each. Got {self.decodings!r} instead."
            )
        for decoding in self.decodings:
            check_chain_use(decoding, adaptive=self.adaptive is not None)
        for name in self.mbr_metrics:
            get_metric(name)  # an unknown utility, or its missing model, fails before sampling
        if not isinstance(self.chain, ChainSettings):
            raise InvalidParameterError(
                f"The 'chain' parameter of eval must be a ChainSettings. Got {self.chain!r} instead."
            )
        if self.adaptive is not None:
            if not isinstance(self.adaptive, Adaptive):
                raise InvalidParameterError(
                    f"The 'adaptive' parameter of eval must be an Adaptive or None. Got {self.adaptive!r} instead."
                )
            # An adaptive run's samples are a prefix of the max_n pool: sample that pool once.
            self.n = self.adaptive.max_n
            if self.tolerance is None and self.adaptive.tolerance != Adaptive().tolerance:
                self.tolerance = self.adaptive.tolerance
            if self.tolerance is not None:
                replace(self.adaptive, tolerance=self.tolerance)  # Adaptive checks it
        # Checked here, before the model loads and samples: the bootstrap runs only after.
        if (
            isinstance(self.bootstrap_iters, bool)
            or not isinstance(self.bootstrap_iters, int)
            or self.bootstrap_iters < 1
        ):
            raise InvalidParameterError(
                f"The 'bootstrap_iters' parameter of eval must be an int >= 1. Got {self.bootstrap_iters!r} instead."
            )
        if self.limit is not None and (
            isinstance(self.limit, bool)
            or not isinstance(self.limit, (int, float))
            or self.limit <= 0
            or (self.limit >= 1 and not float(self.limit).is_integer())
        ):
            raise InvalidParameterError(
                "The 'limit' parameter of eval must be an int >= 1 or a fraction in (0, 1) "
                f"of the items. Got {self.limit} instead."
            )
        if self.limit is not None and self.limit >= 1:
            self.limit = int(self.limit)
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise InvalidParameterError(
                f"The 'num_fewshot' parameter of eval must be an int >= 0. Got {self.num_fewshot} instead."
            )
        if not self.temperatures or any(t <= 0 for t in self.temperatures):
            raise InvalidParameterError(
                f"The 'temperatures' parameter of eval must be one or more floats > 0 (greedy is always run). Got {self.temperatures} instead."
            )
        if not self.tasks:
            raise InvalidParameterError(
                "The 'tasks' parameter of eval must name at least one task."
            )


def signature_string(
    config: EvalConfig,
    model_signature: str,
    task: Any,
    temperature: float,
    decoder: Decoder,
    metric: str,
    decoding: str = "local",
) -> str:
    """A sacrebleu-style signature that lets a reader reproduce one number.

    Fields are ``key:value`` joined by ``|``: model, backend, task@version, the extractor's
    signature (how answers were read: ``number:answer``, its range and cues), shots, n,
    sampling settings, seed, decoder, its settings where it has any (an adaptive decoder's
    stopping rule), ``decoding:global(burn_in=B,thin=T)`` for global decoding (absent for
    local), metric and metricwise version. A ``|`` or ``\\`` inside a
    value (a regex extractor's pattern) is escaped with a backslash, so the fields split back.
    """
    from metricwise import __version__

    return "|".join(
        [
            f"model:{model_signature}",
            f"backend:{config.backend}",
            f"task:{task.name}@{task.version}",
            f"extract:{_escape_field(extractor_for(task).signature())}",
            f"shots:{_shots(config, task)}",
            f"n:{config.n}",
            f"t:{temperature:g}",
            f"p:{config.top_p:g}",
            f"k:{config.top_k}",
            f"minp:{config.min_p:g}",
            f"seed:{config.seed}",
            f"decoder:{decoder.label}",
            *_settings_field(decoder, task),
            *(
                [f"decoding:global(burn_in={config.chain.burn_in},thin={config.chain.thin})"]
                if decoding == "global"
                else []
            ),
            f"metric:{metric}",
            f"version:{__version__}",
        ]
    )


def _shots(config: EvalConfig, task: Any) -> str:
    """``5/random`` for a metricwise task; ``3/lm_eval(seed=1234)`` for an lm-eval task, whose
    shots lm-eval chose."""
    adapted = getattr(task, "lm_eval", None)
    if adapted is not None:
        return f"{adapted.num_fewshot}/lm_eval(seed={adapted.fewshot_seed})"
    return f"{_num_fewshot(config)}/{config.fewshot_strategy}"


def _num_fewshot(config: EvalConfig) -> int:
    return DEFAULT_NUM_FEWSHOT if config.num_fewshot is None else config.num_fewshot


#: Shots per prompt of metricwise's own tasks when --num_fewshot is not given.
DEFAULT_NUM_FEWSHOT = 5


def _settings_field(decoder: Decoder, task: Any) -> list[str]:
    """``settings:min_n=4,max_n=32,...`` for a decoder with settings beyond its label."""
    settings = decoder.settings(task)
    if not settings:
        return []
    text = ",".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items()
    )
    return [f"settings:{_escape_field(text)}"]


def _escape_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace("|", "\\|")


def run_eval(config: EvalConfig, *, backend: Any = None) -> dict[str, Any]:
    """Run ``config``; returns the results (also written under ``config.output_path``).

    ``backend`` replaces loading ``config.model`` (tests pass a tiny model's backend).
    """
    from metricwise.backends import load_backend
    from metricwise.backends.base import check_prompts_before_loading, prompt_cache_summary
    from metricwise.models import cache_dir
    from metricwise.store import SampleStore, greedy_sampling_config
    from metricwise.tasks import get_task
    from metricwise.tasks.base import resolve_data_dir

    data_dir = resolve_data_dir(config.data_dir)
    # Unknown names, and lm-eval tasks metricwise cannot decide, fail before the model loads.
    lm_eval_tasks = _lm_eval_tasks(config)
    prepared: list[tuple[Any, list[Item], list[str], list[Any] | None]] = []
    for name in config.tasks:
        if name in lm_eval_tasks:
            for adapted in lm_eval_tasks[name]:
                prepared.append((adapted.task, adapted.items, adapted.prompts, None))
            continue
        task = get_task(name)
        prepared.append(
            (
                task,
                *prepare_task(
                    task,
                    data_dir,
                    limit=config.limit,
                    num_fewshot=_num_fewshot(config),
                    fewshot_strategy=config.fewshot_strategy,
                    seed=config.seed,
                ),
            )
        )

    for task, items, prompts, _ in prepared if backend is None else ():
        # A prompt too long for the model is named by its item before the weights load.
        check_prompts_before_loading(
            config.backend,
            config.model,
            [(f"{task.name}: item {item.id!r}", p) for item, p in zip(items, prompts, strict=True)],
            task.max_tokens if config.max_tokens is None else config.max_tokens,
            **config.model_args,
        )
    store_path = config.store or str(cache_dir() / "samples.sqlite")
    # The store opens before the model loads, so that a bad --store path fails in a second.
    store = SampleStore(store_path)
    owned = backend is None
    try:
        if backend is None:
            backend = load_backend(config.backend, config.model, **config.model_args)
    except BaseException:
        store.close()
        raise
    say = (lambda *a: None) if config.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    say(f"metricwise eval: {backend.signature}; store {store_path}")
    results: dict[str, Any] = {
        "metricwise_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {**asdict(config), "model_signature": backend.signature},
        "runs": [],
    }
    all_records: dict[str, Sequence[ItemRecord]] = {}
    from metricwise.integrations.lm_eval.results import TaskRun

    layout: list[TaskRun] = []
    try:
        with store:
            for task, items, prompts, prior_references in prepared:
                base = SamplingConfig(
                    n=config.pool_size,
                    top_p=config.top_p,
                    top_k=config.top_k,
                    min_p=config.min_p,
                    max_tokens=task.max_tokens if config.max_tokens is None else config.max_tokens,
                    stop=task.stop if config.stop is None else tuple(config.stop),
                    seed=config.seed,
                )
                first = SamplingConfig(
                    **{**asdict(base), "temperature": config.temperatures[0], "stop": base.stop}
                )
                distinct = list(dict.fromkeys(prompts))
                greedy_config = greedy_sampling_config(base)
                todo = set(store.missing(backend.signature, distinct, greedy_config))
                todo.update(store.missing(backend.signature, distinct, first))
                pending = [p for p in distinct if p in todo]
                label = f"{task.name}: greedy + n={config.pool_size} samples (t={config.temperatures[0]:g})"
                done = len(distinct) - len(pending)
                with Progress(
                    len(distinct), label, unit="prompt", enabled=not config.quiet, initial=done
                ) as bar:
                    # Batch by batch, greedy then samples: the hf backend reuses the batch's prefill.
                    for lo in range(0, len(pending), config.batch_size):
                        chunk = pending[lo : lo + config.batch_size]
                        store.greedy(backend, chunk, base, batch_size=config.batch_size)
                        store.sample(backend, chunk, first, batch_size=config.batch_size)
                        bar.update(done + lo + len(chunk))
                greedy = store.greedy(backend, prompts, base, batch_size=config.batch_size)
                for temperature in config.temperatures:
                    sampling = SamplingConfig(
                        **{**asdict(base), "temperature": temperature, "stop": base.stop}
                    )
                    resumed = len(set(prompts)) - len(
                        store.missing(backend.signature, prompts, sampling)
                    )
                    with Progress(
                        len(set(prompts)),
                        f"{task.name}: n={config.pool_size} samples (t={temperature:g})",
                        unit="prompt",
                        enabled=not config.quiet,
                        initial=resumed,
                    ) as bar:
                        pools = store.sample(
                            backend,
                            prompts,
                            sampling,
                            batch_size=config.batch_size,
                            progress=lambda d, t: bar.update(d),
                        )
                    decoders = default_decoders(
                        task,
                        prior=prior_references is not None,
                        adaptive=config.adaptive,
                        tolerance=config.tolerance,
                        extra_mbr_metrics=config.mbr_metrics,
                    )
                    scored: dict[str, tuple[dict[str, Any], list[ItemRecord]]] = {}
                    for decoding in config.decodings:
                        decoded, chains = _decoded_pools(config, pools, temperature, decoding)
                        with Progress(
                            len(decoders),
                            f"{task.name}: scoring decoders"
                            + (" (global)" if decoding == "global" else ""),
                            unit="decoder",
                            enabled=not config.quiet,
                        ) as bar:
                            run, records = score_task(
                                task,
                                items,
                                prompts,
                                greedy,
                                decoded,
                                decoders=decoders,
                                bootstrap_iters=config.bootstrap_iters,
                                seed=config.seed,
                                curve_subsets=config.curve_subsets,
                                signature=functools.partial(
                                    signature_string,
                                    config,
                                    backend.signature,
                                    task,
                                    temperature,
                                    decoding=decoding,
                                ),
                                progress=lambda d, t: bar.update(d),
                                prior_references=prior_references,
                            )
                        run.update(
                            {
                                "temperature": temperature,
                                "n": config.n,
                                "num_fewshot": (
                                    task.lm_eval.num_fewshot
                                    if hasattr(task, "lm_eval")
                                    else _num_fewshot(config)
                                ),
                                "decoding": decoding,
                            }
                        )
                        if chains is not None:
                            run["chain"] = chain_summary(chains)
                        scored[decoding] = (run, records)
                        results["runs"].append(run)
                        name = (
                            f"{task.name}_t{temperature:g}"
                            if len(config.temperatures) > 1
                            else task.name
                        )
                        all_records[name + ("_global" if decoding == "global" else "")] = records
                        if decoding == "local":
                            layout.append(TaskRun(name, task, items, run, records))
                    if len(scored) == 2:
                        scored["global"][0]["vs_local"] = compare_decodings(
                            scored["global"][1],
                            scored["local"][1],
                            task,
                            decoders,
                            bootstrap_iters=config.bootstrap_iters,
                            seed=config.seed,
                        )
        summary = prompt_cache_summary(backend)
        if summary:
            say(f"metricwise eval: {summary}")
    finally:
        if owned:
            backend.close()

    if config.output_path:
        write_outputs(
            results,
            all_records if config.log_samples else {},
            Path(config.output_path),
            plots=config.plots,
        )
        from metricwise.integrations.lm_eval.results import write_lm_eval_layout

        write_lm_eval_layout(
            layout,
            Path(config.output_path),
            model_name=config.lm_eval_model_name or str(config.model or backend.signature),
            config=_lm_eval_config(config, backend.signature),
            log_samples=config.log_samples,
        )
        if config.inspect_log:
            from metricwise.evaluate.inspect_log import write_inspect_logs

            write_inspect_logs(results, all_records, Path(config.output_path) / "inspect")
    return results


def _lm_eval_config(config: EvalConfig, model_signature: str) -> dict[str, Any]:
    """The ``config`` block of lm-eval's results file, from this run's settings."""
    return {
        "model": config.backend,
        "model_args": {k: v for k, v in config.model_args.items() if k != "guards"}
        | ({"pretrained": config.model} if config.model else {}),
        "model_signature": model_signature,
        "batch_size": config.batch_size,
        "limit": config.limit,
        "bootstrap_iters": config.bootstrap_iters,
        "gen_kwargs": config.lm_eval_gen_kwargs or None,
        "random_seed": config.seed,
        "fewshot_seed": config.fewshot_seed,
        "n": config.n,
        "temperatures": config.temperatures,
    }


def _lm_eval_tasks(config: EvalConfig) -> dict[str, list[Any]]:
    """The lm-eval tasks among ``config.tasks`` (name -> its adapted tasks; a group has
    several), built by lm-eval's TaskManager; {} when there are none (lm-eval is not imported)."""
    from metricwise.integrations.lm_eval.tasks import is_lm_eval_task

    names = [n for n in config.tasks if is_lm_eval_task(n, config.include_path)]
    if config.include_path is not None and not names:
        raise InvalidParameterError(
            f"The 'include_path' parameter of eval names lm-eval tasks, but none of "
            f"{config.tasks} is an lm-eval task found there or in lm-eval's own tasks."
        )
    if not names:
        return {}
    from metricwise.integrations.lm_eval.tasks import LmEvalOptions, load_lm_eval_tasks

    chat_template = None
    if config.apply_chat_template:
        chat_template = _chat_template(config)
    options = LmEvalOptions(
        include_path=config.include_path,
        num_fewshot=config.num_fewshot,
        fewshot_seed=config.fewshot_seed,
        gen_kwargs=dict(config.lm_eval_gen_kwargs) or None,
        limit=config.limit,
        apply_chat_template=config.apply_chat_template,
        chat_template=chat_template,
        tokenizer_name=str(config.model or ""),
        metadata={"pretrained": config.model} if config.model else {},
    )
    out = {name: load_lm_eval_tasks([name], options) for name in names}
    if not config.quiet:
        for adapted in (a for group in out.values() for a in group):
            for note in adapted.notes:
                print(f"metricwise eval: {note}", file=sys.stderr)
    return out


def _chat_template(config: EvalConfig) -> Any:
    """lm-eval's ``chat_template`` callable for an hf model: the tokenizer's template. Its text
    starts with the BOS token where the template writes it; lm-eval's HFLM then encodes without
    adding another, so the BOS text is left out here, where the backend's tokenizer adds it."""
    if config.backend != "hf":
        raise InvalidParameterError(
            "The 'apply_chat_template' parameter of eval applies the model's chat template with "
            f"the hf backend; with {config.backend!r} use --model local-chat-completions (the "
            "server applies its template). Got --backend " + config.backend + " instead."
        )
    from metricwise.models import DEFAULT_MODEL, load_hf_tokenizer

    tokenizer, _ = load_hf_tokenizer(config.model if config.model is not None else DEFAULT_MODEL)
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]

    def apply(chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        text = tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return text[len(bos) :] if adds_bos and text.startswith(bos) else text

    return apply


def prepare_task(
    task: Any,
    data_dir: Path | None,
    *,
    limit: int | float | None = None,
    num_fewshot: int = 5,
    fewshot_strategy: str = "random",
    seed: int = 0,
) -> tuple[list[Item], list[str], list[Any] | None]:
    """A task's first ``limit`` eval items, their few-shot prompts, and the prior decoder's
    references (one per few-shot item; None when the task has no few-shot split)."""
    from metricwise.tasks.fewshot import select_shots

    items = task.load(data_dir, split="eval")
    if limit is not None:
        items = items[: _sample_size(len(items), limit)]
    shots: list[list[Any]] = [[] for _ in items]
    pool = _fewshot_split(task, data_dir, required=num_fewshot > 0)
    if pool is not None and num_fewshot > 0:
        shots = select_shots(
            pool,
            items,
            num_fewshot,
            strategy=fewshot_strategy,
            seed=seed,
            text=task.similarity_text,
        )
    prompts = [task.format_prompt(item, s) for item, s in zip(items, shots, strict=True)]
    prior_references = (
        None if pool is None else [item.references[0] for item in pool if item.references]
    )
    return items, prompts, prior_references


def _sample_size(total: int, limit: int | float) -> int:
    """The items ``limit`` keeps of ``total``: a fraction below 1 rounds up (lm-eval's rule)."""
    return math.ceil(total * limit) if limit < 1 else int(limit)


def _decoded_pools(
    config: EvalConfig, pools: Sequence[SampleSet], temperature: float, decoding: str
) -> tuple[list[SampleSet], list[Any] | None]:
    """The ``n`` samples per item that the decoders read under ``decoding``, and the chains
    (None for local decoding, which reads the first ``n`` of the pool)."""
    if decoding == "local":
        return [replace(p, candidates=p.candidates[: config.n]) for p in pools], None
    chains = global_chains(
        pools, config.n, temperature=temperature, settings=config.chain, seed=config.seed
    )
    return [c.states for c in chains], chains


def compare_decodings(
    global_records: Sequence[ItemRecord],
    local_records: Sequence[ItemRecord],
    task: Any,
    decoders: Sequence[Decoder],
    *,
    bootstrap_iters: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Each decoder's global score minus its local score on the same items, with a paired
    bootstrap interval and p-value: ``[{"decoder", "metric", "difference", "ci", "p_value"}]``.

    Decoders that read no samples (greedy, the prior) score the same under both and are left
    out; both decodings read one pool of proposals, so the difference is the chain's alone.
    """
    indices = resample_indices(len(global_records), bootstrap_iters, seed=seed)
    rows = []
    for decoder in decoders:
        if not decoder.uses_samples:
            continue
        label = decoder.label
        for metric in task.metrics:
            a = np.array([r.scores[label][metric] for r in global_records])
            b = np.array([r.scores[label][metric] for r in local_records])
            cmp = paired_bootstrap(a, b, indices=indices)
            rows.append({"decoder": label, "metric": metric, **cmp.to_dict()})
    return rows


def _fewshot_split(task: Any, data_dir: Path | None, *, required: bool) -> list[Item] | None:
    """The task's few-shot split: the shots' source and the prior decoder's references.

    With ``num_fewshot=0`` a task may lack one; the results then have no ``prior`` row.
    """
    try:
        return task.load(data_dir, split="fewshot")
    except InvalidParameterError:
        if required:
            raise
        return None


def write_outputs(
    results: dict[str, Any],
    records: dict[str, Sequence[ItemRecord]],
    out: Path,
    *,
    plots: bool = True,
) -> list[Path]:
    """results.json, samples_<task>.jsonl, results.md and PNG plots under ``out``."""
    from metricwise.evaluate.report import render_markdown, write_plots

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json"]
    (out / "results.json").write_text(
        json.dumps(json_safe(results), indent=2) + "\n", encoding="utf-8"
    )
    for name, task_records in records.items():
        path = out / f"samples_{name}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for record in task_records:
                write_json_line(fh, asdict(record))
        written.append(path)
    (out / "results.md").write_text(render_markdown(results) + "\n", encoding="utf-8")
    written.append(out / "results.md")
    if plots:
        written += write_plots(results, out)
    return written


def _version() -> str:
    from metricwise import __version__

    return __version__
