"""``metricwise serve``: metric-aware answers behind an OpenAI-compatible API.

A request is an ordinary OpenAI completions or chat request plus metricwise fields (``metric``,
``samples``, ``rule``, ...). The server draws the samples from any metricwise backend (a local
model, or upstream OpenAI-compatible servers), decides, and answers with the Bayes-optimal
answer as the first choice, with a ``metricwise`` object describing the decision. Without
``metric`` the request goes to the backend as asked (greedy or sampled).

Modules
-------
``settings``          the server's limits (:class:`ServeSettings`), no dependencies
``schemas``           pydantic models of the requests
``errors``            OpenAI-shaped error bodies and the mapping from metricwise's exceptions
``scheduler``         the bounded queue and the worker threads that call the backend
``metrics_registry``  Prometheus counters, written in the text format by hand
``app``               the FastAPI application: :func:`create_app`
``cli``               the ``metricwise serve`` subcommand

FastAPI, uvicorn and pydantic (the ``[serve]`` extra) are imported by ``app`` and ``schemas``
only, so ``import metricwise`` and ``metricwise --help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metricwise.serve.settings import ServeSettings

if TYPE_CHECKING:
    from metricwise.serve.app import create_app

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from metricwise.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'metricwise.serve' has no attribute {name!r}")
