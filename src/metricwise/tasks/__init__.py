"""Tasks: benchmark data, prompts with k-shot examples, answer extraction and target metrics.

>>> from metricwise.tasks import get_task, task_names
>>> "stsb" in task_names()
True
>>> task = get_task("arith")
>>> items = task.load(None)
>>> len(items), items[0].references == (float(items[0].target),)
(200, True)
>>> get_task("stsb", max_tokens=4).max_tokens
4

A YAML file works wherever a task name does: ``get_task("examples/my_task.yaml")`` (see
:mod:`metricwise.tasks.yaml_task`). Few-shot examples come from
:func:`metricwise.tasks.fewshot.select_shots`.

Layout
------
Generic modules: :mod:`~metricwise.tasks.base` (the :class:`Task` contract and
:func:`check_task`), :mod:`~metricwise.tasks.readers` (data files and the dataset-hub fallback),
:mod:`~metricwise.tasks.splits` (the evaluated items and the few-shot pool from those files),
:mod:`~metricwise.tasks.registry`, :mod:`~metricwise.tasks.fewshot` and
:mod:`~metricwise.tasks.yaml_task`. Every other module is a task family that registers its
tasks beside their parsers, for example :mod:`~metricwise.tasks.qa` (triviaqa, nq_open, squad)
or :mod:`~metricwise.tasks.arith`; ``metricwise tasks`` lists them all.

Adding a built-in task is adding one module here: parse the data file with the readers, build
a loader with :func:`~metricwise.tasks.splits.split_loader` or
:func:`~metricwise.tasks.splits.holdout_loader`, and call
``builtin_task(Task(name=..., loader=...))`` (:func:`~metricwise.tasks.registry.builtin_task`)
beside the parser. The registry imports every module of the package on first use, so nothing
else lists it (a separately installed package adds tasks through the ``metricwise.tasks`` entry
point group);
``tests/test_tasks.py`` checks every registered task and wants its row counts in
``EXPECTED_SIZES``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from metricwise.errors import InvalidParameterError, UnknownNameError, did_you_mean
from metricwise.tasks.base import SPLITS, Item, Task, check_task, resolve_data_dir
from metricwise.tasks.fewshot import STRATEGIES, select_shots
from metricwise.tasks.registry import TASKS
from metricwise.tasks.yaml_task import load_task_file

__all__ = [
    "SPLITS",
    "STRATEGIES",
    "Item",
    "Task",
    "check_task",
    "get_task",
    "load_task_file",
    "register_task",
    "resolve_data_dir",
    "select_shots",
    "task_names",
]

# Every module of the package is imported on first use (TASKS.discover), so that each task
# family module registers its tasks: adding a family is adding a file, with no list to update.
# Generic modules (base, readers, fewshot, yaml_task, ...) register nothing.
#: Built-in tasks are checked once, when first asked for (register_task checks at once).
_CHECKED: set[str] = set()
_TUPLE_FIELDS = ("metrics", "corpus_metrics", "stop", "similarity_fields", "valid_range")
_OVERRIDABLE = tuple(f.name for f in dataclasses.fields(Task) if f.name != "loader")


def task_names() -> list[str]:
    """Sorted names of the registered tasks (the built-in ones, plugins' and any
    :func:`register_task`)."""
    return TASKS.names()


def register_task(task: Task) -> Task:
    """Register ``task`` under ``task.name``; refuses a name that is taken.

    Raises
    ------
    InvalidParameterError
        For a duplicate name or an invalid task (see :func:`check_task`).
    """
    if not isinstance(task, Task):
        raise InvalidParameterError(
            f"The 'task' parameter of register_task must be a Task. Got {task!r} instead."
        )
    if task.name in TASKS:
        raise InvalidParameterError(f"A task named {task.name!r} is already registered.")
    TASKS.add(task.name, check_task(task))
    _CHECKED.add(task.name)
    return task


def _is_task_file(name: str) -> bool:
    return (
        name.lower().endswith((".yaml", ".yml"))
        or os.sep in name
        or (os.altsep is not None and os.altsep in name)
    )


def get_task(name: str | os.PathLike[str], **overrides: Any) -> Task:
    """The task called ``name``, or the task a YAML file defines, with ``overrides`` applied.

    Parameters
    ----------
    name:
        A registered name (see :func:`task_names`) or the path of a YAML task file (anything
        ending in ``.yaml``/``.yml`` or containing a path separator).
    **overrides:
        Replacements for the task's fields, e.g. ``max_tokens=64``, ``template=...``,
        ``metrics=("absolute_error",)``, ``valid_range=None``. The result is checked again.

    Raises
    ------
    UnknownNameError
        For an unknown task or field name, with a "did you mean" suggestion.
    InvalidParameterError
        For an invalid override or task file.
    """
    if isinstance(name, os.PathLike) or (isinstance(name, str) and _is_task_file(name)):
        task = load_task_file(name)
    elif not isinstance(name, str):
        raise InvalidParameterError(
            f"The 'name' parameter of get_task must be a task name or a YAML file path. Got {name!r} instead."
        )
    elif name in TASKS:
        task = TASKS[name]
        if name not in _CHECKED:
            check_task(task)
            _CHECKED.add(name)
    else:
        names = task_names()
        hint = did_you_mean(name, names) or did_you_mean(name.lower(), names)
        raise UnknownNameError(
            f"Unknown task {name!r}.{hint} Known tasks: {', '.join(names)}; "
            "or pass a YAML task file (a path ending in .yaml)."
        )
    if not overrides:
        return task
    for key in overrides:
        if key not in _OVERRIDABLE:
            raise UnknownNameError(
                f"The task {task.name!r} has no field {key!r} to override.{did_you_mean(key, list(_OVERRIDABLE))} "
                f"Fields: {', '.join(_OVERRIDABLE)}."
            )
    changes: dict[str, Any] = {
        k: tuple(v) if k in _TUPLE_FIELDS and isinstance(v, list) else v
        for k, v in overrides.items()
    }
    if isinstance(changes.get("stop"), str):
        changes["stop"] = (changes["stop"],)
    if isinstance(changes.get("metrics"), str):
        changes["metrics"] = (changes["metrics"],)
    return check_task(
        dataclasses.replace(task, **changes),
        f"task {task.name!r} (with overrides {sorted(overrides)})",
    )
