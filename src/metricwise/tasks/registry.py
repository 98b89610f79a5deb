"""Where tasks are registered: each task family module registers its tasks here on import.

:mod:`metricwise.tasks` imports every module of the package once (so adding a task family is
adding one file), and reads the registry through :func:`~metricwise.tasks.task_names` and
:func:`~metricwise.tasks.get_task`. Users add their own tasks with
:func:`~metricwise.tasks.register_task`, which checks them.
"""

from __future__ import annotations

from metricwise.errors import InvalidParameterError
from metricwise.tasks.base import Task

__all__ = ["builtin_task", "registered"]

_REGISTRY: dict[str, Task] = {}


def registered() -> dict[str, Task]:
    """The registry itself (name -> task), shared by everything that reads or adds tasks."""
    return _REGISTRY


def builtin_task(task: Task) -> Task:
    """Register a task that ships with metricwise; its family module calls this beside its parser.

    The task is not checked here: :func:`~metricwise.tasks.base.check_task` loads every metric
    module to learn the metric names, which importing :mod:`metricwise.tasks` should not cost.
    ``tests/test_tasks.py`` checks every built-in task instead.

    Raises
    ------
    InvalidParameterError
        For a name that is already taken (two family modules defining the same task).
    """
    if task.name in _REGISTRY:
        raise InvalidParameterError(f"A task named {task.name!r} is already registered.")
    _REGISTRY[task.name] = task
    return task
