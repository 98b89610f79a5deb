"""Exceptions raised for bad input and failures; the CLI maps them to exit codes.

Messages follow one template: what was wrong, which parameter, what was expected, what was got
("The 'n' parameter of sample must be an int >= 1. Got 0 instead.").
"""

from __future__ import annotations

from typing import Any


class MetricwiseError(Exception):
    """Base class of every error metricwise raises on purpose."""

    exit_code = 1


class InvalidParameterError(MetricwiseError, ValueError):
    """A parameter or an input record is malformed (CLI exit code 2)."""

    exit_code = 2


class UnknownNameError(InvalidParameterError, KeyError):
    """A name (metric, rule, model, task) is not registered (CLI exit code 2)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StoreDamagedError(InvalidParameterError):
    """The sample store's file is damaged (SQLite reports it corrupt, or it is not a database);
    the message says how to recover its intact rows (CLI exit code 2)."""


class MissingDependencyError(MetricwiseError, ImportError):
    """An optional extra is needed but not installed (CLI exit code 1)."""


class BackendError(MetricwiseError, RuntimeError):
    """A model backend or server failed (CLI exit code 3). Nothing of the failed request is stored."""

    exit_code = 3


class SamplingTimeout(BackendError):
    """A sampling call ran past its wall-clock budget (``Guards.max_seconds``, ``--max_seconds``).

    A timeout is a failure to sample, not a sample: the batch in flight is discarded, batches
    committed before it stay in the store, and the next run asks for the missing samples again.
    """


def import_torch(purpose: str, *, extra: str = "hf", with_transformers: bool = False) -> Any:
    """The ``torch`` module (with ``transformers`` importable too when ``with_transformers``).

    Raises :class:`MissingDependencyError` naming ``purpose`` (what needs it, e.g. "The hf
    backend"), the module that is missing and the install command: torch pinned first, since
    an unpinned torch pulls several GB of CUDA packages, then the ``extra``.
    """
    try:
        import torch

        if with_transformers:
            import transformers  # noqa: F401
    except ImportError as exc:
        needs = "torch and transformers" if with_transformers else "torch"
        raise MissingDependencyError(
            f"{purpose} needs {needs} ({exc.name} is not installed): "
            f"pip install torch==2.13.0 'metricwise[{extra}]'."
        ) from None
    return torch


def did_you_mean(name: str, choices: list[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
