"""lm-eval tasks inside ``metricwise eval``: built by lm-eval, decided and scored by metricwise.

:func:`load_lm_eval_tasks` asks lm-eval's own ``TaskManager`` for the tasks (a name, with
``--include_path`` as ``lm_eval`` reads it, or a task YAML file), applies what
``lm_eval.simple_evaluate`` applies before it runs them (``--gen_kwargs`` into the task's
``generation_kwargs``, ``--num_fewshot`` unless the task fixes 0, the few-shot seed, the
limit with lm-eval's ``get_sample_size``), and builds the requests with the task's own
``build_all_requests``: the prompts are lm-eval's, few-shot context included. Nothing of
lm-eval's task loading is redone here.

Each task becomes a :class:`~metricwise.tasks.base.Task` whose items carry their prompt
already built (template ``{prompt}``), whose stop strings are the task's ``until`` and whose
budget is its ``max_gen_toks``; the answer is the generated text as it stands (lm-eval's
``none`` filter scores it unchanged), answer type text. Each lm-eval metric becomes the
``lm_eval`` metric (:mod:`metricwise.metrics.harness`): lm-eval's registered function with the
task's ``metric_list`` arguments, never metricwise's ``exact_match`` (SQuAD normalisation, which
lm-eval's exact match does not do). The gold answer is computed as lm-eval's
``process_results`` computes it (``doc_to_target``, ``doc_to_choice``, multiple targets).

Refused, with the reason: loglikelihood and multiple-choice tasks (they score fixed choices by
log-likelihood; there are no answers to decide among), tasks with their own
``process_results``, corpus-level metrics (an aggregation other than the mean: bleu, chrf, ter),
and filters that rewrite answers (regex extraction, ...). Filters that only pick one of a task's
``repeats`` (``take_first``, ``majority_vote``, metricwise's own) are what metricwise's decoders
replace: they are left out, and the notes say so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metricwise.errors import InvalidParameterError
from metricwise.tasks.base import Item, Task

#: lm-eval's default few-shot seed (``--seed``'s fourth value, lm_eval.utils DEFAULT_OTHER_SEED).
DEFAULT_FEWSHOT_SEED = 1234
#: What HFLM generates when a task sets no ``max_gen_toks`` (lm_eval/models/huggingface.py).
DEFAULT_MAX_GEN_TOKS = 256
#: The whole generated text, unchanged (lm-eval's ``none`` filter).
WHOLE_TEXT = "regex:(?s).*"
#: Filters that pick one answer among a task's repeats: metricwise's decoders replace them.
SELECTING_FILTERS = frozenset({"take_first", "majority_vote", "metricwise", "MetricAwareFilter"})


@dataclass(frozen=True)
class LmEvalTask(Task):
    """A metricwise :class:`Task` built from an lm-eval task; ``lm_eval`` is its
    :class:`AdaptedTask` (docs, lm-eval's task object, metric names)."""

    lm_eval: Any = field(default=None, compare=False, repr=False)


_KEYS = frozenset({"doc_to_text", "dataset_path", "include", "output_type", "doc_to_target"})


class _TolerantLoader:
    """A YAML SafeLoader that reads lm-eval's ``!function`` tags (and any other) as None."""

    @staticmethod
    def load(text: str) -> Any:
        import yaml

        class Loader(yaml.SafeLoader):
            pass

        Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
        return yaml.load(text, Loader=Loader)


def is_lm_eval_task_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an lm-eval task YAML (``task:`` with ``doc_to_text``,
    ``dataset_path`` or ``include``), not one of metricwise's own YAML tasks."""
    p = Path(path)
    if p.suffix.lower() not in (".yaml", ".yml") or not p.is_file():
        return False
    try:
        data = _TolerantLoader.load(p.read_text(encoding="utf-8"))
    except Exception:
        return False
    return isinstance(data, dict) and "task" in data and bool(_KEYS & set(data))


@dataclass
class LmEvalOptions:
    """What ``lm_eval``'s flags set before the requests are built (see simple_evaluate)."""

    include_path: str | None = None
    num_fewshot: int | None = None
    fewshot_seed: int | None = DEFAULT_FEWSHOT_SEED
    gen_kwargs: dict[str, Any] | None = None
    limit: int | float | None = None
    system_instruction: str | None = None
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    chat_template: Callable[..., str] | None = None
    tokenizer_name: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class AdaptedTask:
    """One lm-eval task as metricwise runs it, and what writing lm-eval's files needs."""

    task: Task
    items: list[Item]
    prompts: list[str]
    docs: list[Any]
    doc_ids: list[int]
    lm_task: Any
    #: metricwise metric spec -> lm-eval metric name
    metric_names: dict[str, str]
    num_fewshot: int
    fewshot_seed: int | None
    n_original: int
    gen_kwargs: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def config(self) -> dict[str, Any]:
        """The task's configuration as lm-eval writes it in ``results_<time>.json``."""
        try:
            dumped = self.lm_task.dump_config()
        except Exception:
            return {}
        return json.loads(json.dumps(dumped, default=str))


def task_manager(include_path: str | None, metadata: dict[str, Any] | None = None) -> Any:
    """lm-eval's TaskManager, as ``lm_eval --include_path`` builds it."""
    _require_lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, metadata=metadata or {})


def is_lm_eval_task(name: str, include_path: str | None, manager: Any = None) -> bool:
    """Whether ``name`` is for lm-eval: an lm-eval task YAML, or (not a metricwise task or
    file) a task, group or tag lm-eval knows, from ``include_path`` or its own tasks. With
    ``include_path``, a name found there is lm-eval's even where metricwise has one alike."""
    if name.lower().endswith((".yaml", ".yml")) or os.sep in name:
        return is_lm_eval_task_file(name)
    from metricwise.tasks import task_names

    if include_path is None and name in task_names():
        return False
    if include_path is None:
        try:
            import lm_eval  # noqa: F401
        except ModuleNotFoundError:
            return False  # metricwise's unknown-task message follows
    if include_path is not None:
        local = task_manager_cached(include_path, defaults=False)
        if local.match_tasks([name]):
            return True
        if name in task_names():
            return False
    manager = manager or task_manager_cached(include_path)
    return bool(manager.match_tasks([name]))


_MANAGERS: dict[tuple[str | None, bool], Any] = {}


def task_manager_cached(include_path: str | None, *, defaults: bool = True) -> Any:
    key = (include_path, defaults)
    if key not in _MANAGERS:
        _require_lm_eval()
        from lm_eval.tasks import TaskManager

        _MANAGERS[key] = TaskManager(include_path=include_path, include_defaults=defaults)
    return _MANAGERS[key]


def _require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ModuleNotFoundError:
        raise InvalidParameterError(
            "lm-eval tasks need lm-eval: pip install 'metricwise[lm_eval]'."
        ) from None


def load_lm_eval_tasks(names: Sequence[str], options: LmEvalOptions) -> list[AdaptedTask]:
    """The lm-eval tasks ``names`` (task, group or tag names, or task YAML files), adapted.

    Raises :class:`~metricwise.errors.InvalidParameterError` for a task metricwise cannot
    decide (see the module's docstring), naming the task and why.
    """
    _require_lm_eval()
    from lm_eval.tasks._yaml_loader import load_yaml

    manager = task_manager(options.include_path, options.metadata)
    specs: list[Any] = []
    for name in names:
        if name.lower().endswith((".yaml", ".yml")):
            specs.append(load_yaml(str(Path(name).absolute()), resolve_func=True))
        else:
            specs.append(name)
    try:
        loaded = manager.load(specs)
    except (KeyError, ValueError) as exc:
        raise InvalidParameterError(f"lm-eval could not load {list(names)}: {exc}") from None
    return [_adapt(name, task, options) for name, task in loaded["tasks"].items()]


def _filter_functions(config: Any) -> list[tuple[str, list[str]]]:
    out = []
    for entry in getattr(config, "filter_list", None) or []:
        if not isinstance(entry, dict):
            continue
        functions = []
        for step in entry.get("filter") or []:
            fn = step.get("function") if isinstance(step, dict) else step
            functions.append(fn if isinstance(fn, str) else getattr(fn, "__name__", str(fn)))
        out.append((str(entry.get("name")), functions))
    return out


def _adapt(name: str, lm_task: Any, options: LmEvalOptions) -> AdaptedTask:
    from lm_eval.api.metrics import mean
    from lm_eval.evaluator_utils import get_sample_size

    config = lm_task.config
    output_type = lm_task.get_config("output_type") or getattr(lm_task, "OUTPUT_TYPE", None)
    if output_type != "generate_until":
        raise InvalidParameterError(
            f"The lm-eval task {name!r} is a {output_type} task: lm-eval scores it by the "
            "log-likelihood of fixed choices (or of the text), so the model generates no answers "
            "to sample and decide among. metricwise eval runs generate_until tasks; run this "
            "one with lm_eval."
        )
    if callable(getattr(config, "process_results", None)):
        raise InvalidParameterError(
            f"The lm-eval task {name!r} scores its docs with its own process_results function; "
            "metricwise cannot score a sampled answer with it apart from lm-eval's whole "
            "pipeline, so it does not adapt this task."
        )
    notes: list[str] = []
    filters = _filter_functions(config)
    rewriting = [
        (fname, fns) for fname, fns in filters if any(f not in SELECTING_FILTERS for f in fns)
    ]
    if rewriting:
        fname, fns = rewriting[0]
        raise InvalidParameterError(
            f"The lm-eval task {name!r} has the filter {fname!r} ({', '.join(fns)}), which "
            "rewrites answers before lm-eval scores them; metricwise eval adapts tasks whose "
            "answers are scored as generated (no filter, or only take_first, majority_vote or "
            "metricwise's filter, which pick among repeats)."
        )
    if filters:
        notes.append(
            f"{name}: its filters {', '.join(f for f, _ in filters)} pick among repeats; "
            "metricwise's decoders take their place"
        )
    if (getattr(config, "repeats", 1) or 1) > 1:
        notes.append(
            f"{name}: repeats={config.repeats} is left out; metricwise samples n per doc itself"
        )
    # As simple_evaluate does, in its order.
    if options.gen_kwargs:
        lm_task.set_config(key="generation_kwargs", value=dict(options.gen_kwargs), update=True)
    if options.num_fewshot is not None:
        if lm_task.get_config("num_fewshot") == 0:
            notes.append(f"{name}: num_fewshot is 0 in the task's config; --num_fewshot ignored")
        else:
            lm_task.set_config(key="num_fewshot", value=options.num_fewshot)
    elif lm_task.get_config("num_fewshot") is None:
        lm_task.set_config(key="num_fewshot", value=0)
    lm_task.set_fewshot_seed(seed=options.fewshot_seed)

    metric_names: dict[str, str] = {}
    for metric, kwargs in lm_task._metric_fn_kwargs.items():
        if lm_task._aggregation_list.get(metric) is not mean:
            raise InvalidParameterError(
                f"The lm-eval task {name!r} aggregates {metric!r} over the corpus, not as a mean "
                "of per-doc values; metricwise eval compares decoders on per-doc scores "
                "(exact_match and other mean-aggregated metrics)."
            )
        args = {**kwargs}
        hib = lm_task._higher_is_better.get(metric)
        if hib is not None:
            args["higher_is_better"] = bool(hib)
        spec = (
            "lm_eval("
            + ",".join(
                [f"metric={metric}"]
                + [f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in sorted(args.items())]
            )
            + ")"
        )
        metric_names[spec] = metric
    if not metric_names:
        raise InvalidParameterError(f"The lm-eval task {name!r} has no metric to score with.")

    limit = get_sample_size(lm_task, options.limit)
    lm_task.build_all_requests(
        limit=limit,
        rank=0,
        world_size=1,
        system_instruction=options.system_instruction,
        apply_chat_template=options.apply_chat_template,
        fewshot_as_multiturn=options.fewshot_as_multiturn,
        chat_template=options.chat_template,
        tokenizer_name=options.tokenizer_name,
    )
    instances = sorted(lm_task.instances, key=lambda inst: inst.doc_id)
    if not instances:
        raise InvalidParameterError(f"The lm-eval task {name!r} has no docs to evaluate.")
    gen = _generation(instances, name)
    items, prompts, docs, doc_ids = [], [], [], []
    for inst in instances:
        context = inst.args[0]
        gold = _gold(lm_task, inst.doc)
        target = gold if isinstance(gold, str) else json.dumps(gold)
        items.append(
            Item(id=str(inst.doc_id), fields={"prompt": context}, references=(gold,), target=target)
        )
        prompts.append(context)
        docs.append(inst.doc)
        doc_ids.append(inst.doc_id)
    version = (getattr(config, "metadata", None) or {}).get(
        "version", getattr(lm_task, "VERSION", None)
    )

    def loader(data_dir: Any, split: str) -> list[Item]:
        if split != "eval":
            raise InvalidParameterError(
                f"The lm-eval task {name!r} builds its few-shot context inside its prompts."
            )
        return list(items)

    task = LmEvalTask(
        name=name,
        description=f"lm-eval task {name} (prompts, targets and metric by lm-eval)",
        answer_type="text",
        metrics=tuple(metric_names),
        extractor=WHOLE_TEXT,
        template="{prompt}",
        answer_prefix="",
        example_separator="",
        stop=tuple(s for s in gen["until"] if s),
        max_tokens=int(gen["max_gen_toks"]),
        version=str(version if version is not None else "0"),
        loader=loader,
    )
    from metricwise.tasks.base import check_task

    check_task(task, f"the lm-eval task {name!r}")
    adapted = AdaptedTask(
        task=task,
        items=items,
        prompts=prompts,
        docs=docs,
        doc_ids=doc_ids,
        lm_task=lm_task,
        metric_names=metric_names,
        num_fewshot=int(lm_task.get_config("num_fewshot") or 0),
        fewshot_seed=options.fewshot_seed,
        n_original=len(lm_task.eval_docs),
        gen_kwargs=gen,
        notes=notes,
    )
    object.__setattr__(task, "lm_eval", adapted)
    return adapted


def _generation(instances: Sequence[Any], name: str) -> dict[str, Any]:
    """The requests' generation settings, normalised as lm-eval's models read them."""
    from lm_eval.models.utils import normalize_gen_kwargs

    first = instances[0].args[1]
    if any(inst.args[1] != first for inst in instances):
        raise InvalidParameterError(
            f"The lm-eval task {name!r} gives its docs different generation settings; "
            "metricwise eval samples one task with one setting."
        )
    gen = dict(normalize_gen_kwargs(dict(first), DEFAULT_MAX_GEN_TOKS))
    until = gen.get("until") or []
    gen["until"] = [until] if isinstance(until, str) else list(until)
    return gen


def _gold(lm_task: Any, doc: Any) -> Any:
    """The target as lm-eval's generate_until process_results computes it."""
    gold = lm_task.doc_to_target(doc)
    if lm_task.config.doc_to_choice is not None:
        return lm_task.doc_to_choice(doc)[gold]
    if getattr(lm_task, "multiple_target", False):
        return [str(g) for g in gold]
    return gold if isinstance(gold, str) else str(gold)


def process_results(adapted: AdaptedTask, index: int, answer: str) -> dict[str, float]:
    """lm-eval's own per-doc scores of ``answer`` for doc ``index``: its process_results."""
    values = adapted.lm_task.process_results(adapted.docs[index], [answer])
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
