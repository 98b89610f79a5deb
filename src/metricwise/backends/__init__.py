"""Sampling backends behind one small protocol (see :mod:`metricwise.backends.base`)."""

from metricwise.backends.base import BACKENDS, Backend, load_backend

__all__ = ["BACKENDS", "Backend", "load_backend"]
