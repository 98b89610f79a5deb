"""One registry type for the four things people add: metrics, backends, tasks and decoders.

Each kind has one :class:`Registry`: a name -> entry map that refuses duplicates, lists its
names, answers an unknown name with "did you mean", and fills itself by one discovery rule on
first use:

1. every module of the kind's built-in package is imported (a module registers its entries
   with a decorator beside their code, so adding one is adding a file; modules whose name
   starts with ``_`` are skipped);
2. then every entry point of the kind's group is loaded, so that a separately installed
   package adds entries without editing metricwise. In its ``pyproject.toml``::

       [project.entry-points."metricwise.metrics"]
       length_gap = "my_package.metrics:LengthGap"

   Loading the entry point imports its module; an entry it did not register itself (no
   decorator) is registered under the entry point's name. A plugin that fails to load is
   reported with a warning naming it and its error, and the rest still load.

Discovery is thread-safe: a thread that asks while another discovers waits for the whole
registry, and the discovering thread may re-enter (a module that asks while it is imported
sees what is registered so far).
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from metricwise.errors import InvalidParameterError, UnknownNameError, did_you_mean

__all__ = ["ENTRY_POINT_GROUPS", "Registry"]

T = TypeVar("T")

#: The entry point group of each kind, as plugins declare them.
ENTRY_POINT_GROUPS = {
    "metric": "metricwise.metrics",
    "backend": "metricwise.backends",
    "task": "metricwise.tasks",
    "decoder": "metricwise.decoders",
}


class Registry(Generic[T]):
    """Name -> entry (a factory, a class or a value) for one kind of extension.

    Parameters
    ----------
    kind:
        What an entry is, for messages: ``"metric"``, ``"backend"``, ``"task"``, ``"decoder"``.
    package:
        The built-in package whose modules are imported on first use.
    group:
        The entry point group plugins declare (:data:`ENTRY_POINT_GROUPS` by default).
    keep_order:
        :meth:`names` in registration order instead of sorted (decoders: the order of a
        results table).
    prepare:
        Called as ``prepare(name, entry)`` before an entry is added, whichever way it comes
        (decorator, function or entry point): checks it and returns what to store (metrics and
        decoders take their name from here).
    """

    def __init__(
        self,
        kind: str,
        package: str,
        group: str | None = None,
        *,
        keep_order: bool = False,
        prepare: Callable[[str, T], T] | None = None,
    ) -> None:
        self.kind = kind
        self.package = package
        self.group = group or ENTRY_POINT_GROUPS[kind]
        self.keep_order = keep_order
        self.prepare = prepare
        self._entries: dict[str, T] = {}
        self._discovered = False
        self._discovering = False
        self._lock = threading.RLock()

    # -- adding ----------------------------------------------------------------------------------
    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; the same entry again is a no-op, another one under
        a taken name is refused."""
        if not isinstance(name, str) or not name:
            raise InvalidParameterError(
                f"A {self.kind}'s name must be a non-empty string. Got {name!r} instead."
            )
        held = self._entries.get(name)
        if held is not None and held is not entry:
            raise InvalidParameterError(f"A {self.kind} named {name!r} is already registered.")
        if held is None and self.prepare is not None:
            entry = self.prepare(name, entry)
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def decorator(entry: T) -> T:
            return self.add(name, entry)

        return decorator

    # -- reading ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """The registered names: sorted, or in registration order with ``keep_order``."""
        self.discover()
        return list(self._entries) if self.keep_order else sorted(self._entries)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; :class:`UnknownNameError` with "did you mean"."""
        self.discover()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        names = self.names()
        return (
            f"Unknown {self.kind} {name!r}.{did_you_mean(str(name), names)} "
            f"Known {self.kind}s: {', '.join(names)}."
        )

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        self.discover()
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.discover()
        return len(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]

    # -- discovery -------------------------------------------------------------------------------
    def discover(self) -> None:
        """Import the built-in package's modules, then load the plugins' entry points; once."""
        if self._discovered:
            return
        with self._lock:
            if self._discovered or self._discovering:
                return
            self._discovering = True
            try:
                package = importlib.import_module(self.package)
                path = getattr(package, "__path__", None)
                for module in pkgutil.iter_modules(path or [], prefix=f"{self.package}."):
                    if not module.name.rpartition(".")[2].startswith("_"):
                        importlib.import_module(module.name)
                self._load_plugins()
            finally:
                self._discovering = False
            self._discovered = True

    def _load_plugins(self) -> None:
        from importlib.metadata import entry_points

        for point in entry_points(group=self.group):
            try:
                entry = point.load()
            except Exception as exc:  # a broken plugin must not break metricwise
                warnings.warn(
                    f"The {self.kind} plugin {point.name!r} ({point.value}, entry point group "
                    f"{self.group!r}) failed to load and is left out: {type(exc).__name__}: {exc}",
                    stacklevel=2,
                )
                continue
            # A module with the decorator registered its entry when it was imported.
            if point.name not in self._entries and all(
                held is not entry for held in self._entries.values()
            ):
                self.add(point.name, entry)
