"""Where tasks are registered: each task family module registers its tasks here on import.

The registry (:data:`TASKS`, a :class:`~metricwise.registry.Registry`) finds them by the rule
every kind of extension follows: on first use it imports every module of
:mod:`metricwise.tasks` (so adding a task family is adding one file), then loads the
``metricwise.tasks`` entry points of installed plugins. It is read through
:func:`~metricwise.tasks.task_names` and :func:`~metricwise.tasks.get_task`. Users add their own
tasks with :func:`~metricwise.tasks.register_task`, which checks them at once.
"""

from __future__ import annotations

from metricwise.errors import InvalidParameterError
from metricwise.registry import Registry
from metricwise.tasks.base import Task

__all__ = ["TASKS", "builtin_task"]


def _named_task(name: str, task: Task) -> Task:
    if not isinstance(task, Task):
        raise InvalidParameterError(
            f"A task registered as {name!r} must be a metricwise.tasks.Task. Got {task!r} instead."
        )
    if task.name != name:
        raise InvalidParameterError(
            f"The task {task.name!r} is registered as {name!r}: a task is registered under its own name."
        )
    return task


#: The tasks: every module of :mod:`metricwise.tasks`, then plugins' entry points.
TASKS: Registry[Task] = Registry("task", "metricwise.tasks", prepare=_named_task)


def builtin_task(task: Task) -> Task:
    """Register a task that ships with metricwise; its family module calls this beside its parser.

    The task is checked when it is first asked for (:func:`~metricwise.tasks.get_task`), not
    here: :func:`~metricwise.tasks.base.check_task` loads every metric module to learn the metric
    names, which finding the tasks should not cost. ``tests/test_tasks.py`` checks every
    built-in task too.

    Raises
    ------
    InvalidParameterError
        For a name that is already taken (two family modules defining the same task).
    """
    if task.name in TASKS._entries:
        raise InvalidParameterError(f"A task named {task.name!r} is already registered.")
    return TASKS.add(task.name, task)
