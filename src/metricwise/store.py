"""A resumable SQLite sample store: sample once, decide many times.

Samples are keyed by (model signature, prompt, sampling settings, seed) and the sample index
``i`` (drawn with seed ``seed + i``), so:

- a run killed at any moment (kill -9 included) loses at most the batch in flight: every batch
  is committed in one transaction, and SQLite's write-ahead log makes the commit atomic;
- re-running skips what is stored and never duplicates (``INSERT OR IGNORE`` on the key);
- asking for more samples (n=16, then n=32) draws only indices 16..31;
- a failure is never stored: :meth:`SampleStore.add` refuses anything that
  :func:`~metricwise.types.sample_problem` rejects, and backends raise instead of returning
  placeholders, so the next run asks for the missing samples again;
- the store is the source of truth: :meth:`SampleStore.sample` returns what the store holds
  after each commit. When two processes sample into one store, each checks again before every
  batch what the other has committed, and where both drew the same sample the first commit wins
  in the store and in what both processes return.

``n`` is not part of the key; everything else in :class:`~metricwise.types.SamplingConfig` is.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from metricwise.errors import BackendError, InvalidParameterError
from metricwise.types import Candidate, SampleSet, SamplingConfig, sample_problem

if TYPE_CHECKING:
    from metricwise.backends.base import Backend

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sample_sets (
    set_key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    config TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    set_key TEXT NOT NULL REFERENCES sample_sets(set_key),
    idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    logp REAL,
    logq REAL,
    n_tokens INTEGER,
    finish_reason TEXT,
    PRIMARY KEY (set_key, idx)
);
"""

#: Called after each committed batch with (prompts done, prompts total).
ProgressCallback = Callable[[int, int], None]


def config_key_fields(config: SamplingConfig) -> dict[str, Any]:
    """The settings that identify a sample set: everything but ``n``."""
    fields = asdict(config)
    fields.pop("n")
    fields["stop"] = list(config.stop)
    return fields


def set_key(model: str, prompt: str, config: SamplingConfig) -> str:
    payload = json.dumps(
        {"model": model, "prompt": prompt, "config": config_key_fields(config)}, sort_keys=True
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class SampleStore:
    """SQLite (WAL) store of candidates. Safe against kill -9; one writer process at a time.

    Parameters
    ----------
    path:
        Database file; created with its parent directory when missing. ``":memory:"`` for tests.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidParameterError(
                f"The sample store {self.path!r} cannot be created: {exc}."
            ) from None
        try:
            self._db = sqlite3.connect(self.path, timeout=60.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise InvalidParameterError(
                f"The sample store {self.path!r} cannot be opened as SQLite: {exc}."
            ) from None

    # -- reading -------------------------------------------------------------------------------
    def lookup(self, model: str, prompt: str, config: SamplingConfig) -> dict[int, Candidate]:
        """Stored candidates with index < ``config.n``, by index."""
        rows = self._db.execute(
            "SELECT idx, text, logp, logq, n_tokens, finish_reason FROM samples WHERE set_key = ? AND idx < ?",
            (set_key(model, prompt, config), config.n),
        ).fetchall()
        return {
            row[0]: Candidate(
                text=row[1], logp=row[2], logq=row[3], n_tokens=row[4], finish_reason=row[5]
            )
            for row in rows
        }

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def held(self, model: str, prompts: Sequence[str], config: SamplingConfig) -> dict[str, int]:
        """How many of its ``config.n`` samples the store holds, per distinct prompt of ``prompts``."""
        return {
            p: int(
                self._db.execute(
                    "SELECT COUNT(*) FROM samples WHERE set_key = ? AND idx < ?",
                    (set_key(model, p, config), config.n),
                ).fetchone()[0]
            )
            for p in dict.fromkeys(prompts)
        }

    def missing(self, model: str, prompts: Sequence[str], config: SamplingConfig) -> list[str]:
        """The distinct prompts among ``prompts`` that do not have all ``config.n`` samples yet."""
        return [p for p, count in self.held(model, prompts, config).items() if count < config.n]

    # -- writing -------------------------------------------------------------------------------
    def add(
        self,
        model: str,
        prompt: str,
        config: SamplingConfig,
        candidates: Sequence[tuple[int, Candidate]],
    ) -> None:
        """Store ``(index, candidate)`` pairs in one transaction; existing indices are kept.

        Raises :class:`~metricwise.errors.BackendError`, storing nothing, when any candidate is a
        failed sample (see :func:`~metricwise.types.sample_problem`).
        """
        for i, candidate in candidates:
            problem = sample_problem(candidate)
            if problem is not None:
                raise BackendError(
                    f"Sample {i} of a prompt is not a valid sample and was not stored: {problem}."
                )
        key = set_key(model, prompt, config)
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO sample_sets (set_key, model, prompt, config, created) VALUES (?, ?, ?, ?, ?)",
                (
                    key,
                    model,
                    prompt,
                    json.dumps(config_key_fields(config), sort_keys=True),
                    time.time(),
                ),
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO samples (set_key, idx, text, logp, logq, n_tokens, finish_reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (key, i, c.text, c.logp, c.logq, c.n_tokens, c.finish_reason)
                    for i, c in candidates
                ],
            )

    # -- sampling through the store ----------------------------------------------------------
    def sample(
        self,
        backend: Backend,
        prompts: Sequence[str],
        config: SamplingConfig,
        *,
        batch_size: int = 8,
        progress: ProgressCallback | None = None,
    ) -> list[SampleSet]:
        """``config.n`` candidates per prompt, drawing only what is not stored yet.

        Prompts are sampled ``batch_size`` at a time and every batch is committed before the
        next starts. Identical prompts are sampled once.
        """
        return self._draw_missing(
            backend.signature, backend.sample, prompts, config, batch_size, progress
        )

    def _draw_missing(
        self,
        model: str,
        draw: Callable[..., list[SampleSet]],
        prompts: Sequence[str],
        config: SamplingConfig,
        batch_size: int,
        progress: ProgressCallback | None,
    ) -> list[SampleSet]:
        """The body of :meth:`sample` and :meth:`greedy`: ``draw(prompts, config, start=i)``
        returns samples ``i .. config.n - 1`` of each prompt."""
        if batch_size < 1:
            raise InvalidParameterError(
                f"The 'batch_size' parameter of SampleStore.sample must be >= 1. Got {batch_size} instead."
            )
        distinct = list(dict.fromkeys(prompts))
        stored = {p: self.lookup(model, p, config) for p in distinct}
        # Whole prompts are committed at once, so what is missing is always a suffix start..n-1.
        todo = [p for p in distinct if _first_missing(stored[p], config.n) < config.n]
        done = len(distinct) - len(todo)
        if progress:
            progress(done, len(distinct))
        todo.sort(
            key=lambda p: _first_missing(stored[p], config.n)
        )  # one start per batch where possible
        for batch in _chunks(todo, batch_size):
            # Another process may have committed some of these since: look again, right before sampling.
            by_start: dict[int, list[str]] = {}
            for prompt in batch:
                stored[prompt] = self.lookup(model, prompt, config)
                start = _first_missing(stored[prompt], config.n)
                if start < config.n:
                    by_start.setdefault(start, []).append(prompt)
            for start, group in sorted(by_start.items()):
                sets = draw(group, config, start=start)
                if len(sets) != len(group):
                    raise BackendError(
                        f"The backend returned {len(sets)} sample sets for {len(group)} prompts."
                    )
                for prompt, sample_set in zip(group, sets, strict=True):
                    self.add(
                        model, prompt, config, list(enumerate(sample_set.candidates, start=start))
                    )
                for prompt in group:
                    # What the store holds (the first writer's sample, where two drew it) is the result.
                    stored[prompt] = self.lookup(model, prompt, config)
                    if _first_missing(stored[prompt], config.n) < config.n:
                        raise BackendError(
                            f"The backend returned {len(stored[prompt])} of the {config.n} samples asked for a prompt."
                        )
            done += len(batch)
            if progress:
                progress(done, len(distinct))
        return [
            SampleSet(candidates=tuple(stored[p][i] for i in range(config.n)), prompt=p)
            for p in prompts
        ]

    def greedy(
        self,
        backend: Backend,
        prompts: Sequence[str],
        config: SamplingConfig,
        *,
        batch_size: int = 8,
        progress: ProgressCallback | None = None,
    ) -> list[Candidate]:
        """One greedy continuation per prompt, stored under :func:`greedy_sampling_config`."""

        def draw_greedy(
            batch: Sequence[str], cfg: SamplingConfig, *, start: int = 0
        ) -> list[SampleSet]:
            return [
                SampleSet(candidates=(c,), prompt=p)
                for p, c in zip(batch, backend.greedy(batch, cfg), strict=True)
            ]

        sets = self._draw_missing(
            backend.signature,
            draw_greedy,
            prompts,
            greedy_sampling_config(config),
            batch_size,
            progress,
        )
        return [s.candidates[0] for s in sets]

    # -- export --------------------------------------------------------------------------------
    def iter_sets(self) -> Iterator[dict[str, Any]]:
        """Every stored set as ``{"model", "prompt", "config", "candidates": [...]}``, by creation time."""
        sets = self._db.execute(
            "SELECT set_key, model, prompt, config FROM sample_sets ORDER BY created, set_key"
        ).fetchall()
        for key, model, prompt, config in sets:
            rows = self._db.execute(
                "SELECT text, logp, logq, n_tokens, finish_reason FROM samples WHERE set_key = ? ORDER BY idx",
                (key,),
            ).fetchall()
            yield {
                "model": model,
                "prompt": prompt,
                "config": json.loads(config),
                "candidates": [
                    Candidate(
                        text=r[0], logp=r[1], logq=r[2], n_tokens=r[3], finish_reason=r[4]
                    ).to_dict()
                    for r in rows
                ],
            }

    def export_jsonl(self, sink: IO[str]) -> int:
        """Write every stored set as one JSON line; returns the number of lines."""
        n = 0
        for record in self.iter_sets():
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
        return n

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def greedy_sampling_config(config: SamplingConfig) -> SamplingConfig:
    """The key greedy continuations are stored under: temperature 0, ``config``'s length and stops."""
    return SamplingConfig(
        n=1, temperature=0.0, max_tokens=config.max_tokens, stop=config.stop, seed=0
    )


def _first_missing(stored: dict[int, Candidate], n: int) -> int:
    for i in range(n):
        if i not in stored:
            return i
    return n


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
