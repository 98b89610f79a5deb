"""Sampling backends behind one small protocol (see :mod:`metricwise.backends.base`).

A backend is one module here whose class (or factory) is decorated with
:func:`register_backend`; modules are discovered on first use.
"""

from metricwise.backends.base import (
    BACKENDS,
    Backend,
    backend_names,
    load_backend,
    register_backend,
)

__all__ = ["BACKENDS", "Backend", "backend_names", "load_backend", "register_backend"]
