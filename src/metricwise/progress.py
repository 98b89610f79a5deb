"""Progress bars on stderr: tqdm when installed, else a plain line every few seconds."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """A progress bar of ``total`` units; ``update(done)`` sets the absolute count.

    Silent when ``enabled`` is False (``--quiet``) or stderr is not a terminal and tqdm is missing.
    """

    def __init__(
        self,
        total: int,
        description: str,
        *,
        unit: str = "it",
        enabled: bool = True,
        initial: int = 0,
    ) -> None:
        """``initial`` units are done already (a resumed run): the bar starts there, and its rate
        and time left count only the work of this run."""
        self.total = total
        self.description = description
        self.unit = unit
        self.enabled = enabled
        self._bar: Any = None
        self._last_print = 0.0
        self._done = initial
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._bar = tqdm(
            total=total,
            initial=initial,
            desc=description,
            unit=unit,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(done - self._done)
        elif time.monotonic() - self._last_print > 5 or done == self.total:
            self._last_print = time.monotonic()
            print(
                f"{self.description}: {done}/{self.total} {self.unit}", file=sys.stderr, flush=True
            )
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
