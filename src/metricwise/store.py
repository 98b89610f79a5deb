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

A store whose file was damaged (a disk or copy error inside its pages) is found when it opens
(SQLite's ``PRAGMA quick_check``, for files up to :data:`QUICK_CHECK_MAX_BYTES`) or at the first
read of a damaged page, and refused with :class:`~metricwise.errors.StoreDamagedError`; nothing
is written to it. :func:`recover_store` (``metricwise recover``) copies its intact rows to a new
store, from which a rerun draws only what was lost.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast

from metricwise.errors import BackendError, InvalidParameterError, StoreDamagedError
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


#: Stores up to this size are checked with ``PRAGMA quick_check`` when they open (measured: 0.12 s
#: for 145 MiB in the page cache, 2.2 s from disk); a larger one is checked page by page as it is
#: read.
QUICK_CHECK_MAX_BYTES = 256 << 20

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite says the file is corrupt (``SQLITE_CORRUPT``), as opposed to locked,
    read-only or not a database at all."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return bool(code & 0xFF == 11)  # SQLITE_CORRUPT and its extended codes
    return "malformed" in str(exc)


def damaged_store_message(path: str, detail: str, *, opening: bool = False) -> str:
    """What is damaged, that nothing was written, and the two ways to recover the intact rows."""
    stem = path[:-7] if path.endswith(".sqlite") else path
    written = (
        "nothing was written to it"
        if opening
        else "nothing more was written to it (the batch in progress was rolled back)"
    )
    return (
        f"The sample store {path!r} is damaged ({detail}); {written}. Copy its intact rows to a new store with "
        f"`metricwise recover {path} {stem}.recovered.sqlite` (or SQLite's own `sqlite3 {path} "
        ".recover | sqlite3 new.sqlite`) and pass the new one as --store: a rerun draws only the "
        "samples that were lost."
    )


def _refuse_damage(method: _Method) -> _Method:
    """Turn SQLite's corruption errors inside ``method`` (a generator method too) into
    :class:`StoreDamagedError` naming the store and the way to recover it."""

    def refuse(store: SampleStore, exc: sqlite3.DatabaseError) -> StoreDamagedError:
        return StoreDamagedError(damaged_store_message(store.path, f"SQLite: {exc}"))

    if getattr(method, "__code__", None) and method.__code__.co_flags & 0x20:  # a generator

        @functools.wraps(method)
        def generate(self: SampleStore, *args: Any, **kwargs: Any) -> Any:
            try:
                yield from method(self, *args, **kwargs)
            except sqlite3.DatabaseError as exc:
                if not _is_damage(exc):
                    raise
                raise refuse(self, exc) from None

        return cast(_Method, generate)

    @functools.wraps(method)
    def call(self: SampleStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            raise refuse(self, exc) from None

    return cast(_Method, call)


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
        except sqlite3.DatabaseError as exc:
            raise InvalidParameterError(
                f"The sample store {self.path!r} cannot be opened as SQLite: {exc}."
            ) from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._check_intact()
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            if _is_damage(exc):
                raise StoreDamagedError(
                    damaged_store_message(self.path, f"SQLite: {exc}", opening=True)
                ) from None
            raise InvalidParameterError(
                f"The sample store {self.path!r} cannot be opened as SQLite: {exc}."
            ) from None
        except StoreDamagedError:
            self._db.close()
            raise

    def _check_intact(self) -> None:
        """``PRAGMA quick_check`` (b-tree pages, records, indices), for stores up to
        :data:`QUICK_CHECK_MAX_BYTES`; raises :class:`StoreDamagedError` with SQLite's findings."""
        if self.path == ":memory:" or not os.path.exists(self.path):
            return
        if os.path.getsize(self.path) > QUICK_CHECK_MAX_BYTES:
            return
        findings = [row[0] for row in self._db.execute("PRAGMA quick_check(5)").fetchall()]
        if findings != ["ok"]:
            lines = [
                line.strip() for f in findings for line in str(f).splitlines() if "***" not in line
            ]
            # "Page N is never used" follows from the damaged page; name that page first.
            lines.sort(key=lambda line: "never used" in line)
            raise StoreDamagedError(
                damaged_store_message(
                    self.path, f"SQLite's quick_check: {'; '.join(lines[:2])}", opening=True
                )
            )

    # -- reading -------------------------------------------------------------------------------
    @_refuse_damage
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

    @_refuse_damage
    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    @_refuse_damage
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
    @_refuse_damage
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
    @_refuse_damage
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


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover_store` copied: rows of each table read intact, and the rows it could
    not read (``lost_*``, counted by row id) or dropped as inconsistent (a sample set whose key
    does not match its content, a sample whose set was lost or whose fields are not a sample)."""

    sets: int
    samples: int
    #: None when the table's top pages are damaged, so that how many rows it had is unknown.
    lost_sets: int | None
    lost_samples: int | None
    dropped_sets: int
    dropped_samples: int

    def describe(self) -> str:
        def lost(count: int | None, what: str) -> str:
            return (
                f"an unknown number of {what} (the table's top pages are damaged)"
                if count is None
                else f"{count} {what}"
            )

        return (
            f"copied {self.samples} samples of {self.sets} sample sets; could not read "
            f"{lost(self.lost_samples, 'samples')} and {lost(self.lost_sets, 'sets')}; dropped "
            f"{self.dropped_samples} samples and {self.dropped_sets} sets as inconsistent"
        )


def recover_store(damaged: str | Path, target: str | Path) -> Recovery:
    """Copy the intact rows of a damaged sample store to a new store at ``target``.

    Each table is read by ranges of row ids; a range that SQLite cannot read is halved until
    single rows, which are skipped (lost). A sample set is kept only when its key is the hash
    of its model, prompt and settings, and a sample only when its set was kept and its fields
    are a valid sample (:func:`~metricwise.types.sample_problem`), so that a damaged row that
    still parses is never taken for a result. Cost: one query per readable range, about
    ``2 * log2(rows)`` more per damaged page. ``target`` must not exist.
    """
    damaged, target = str(damaged), str(target)
    if not os.path.exists(damaged):
        raise InvalidParameterError(f"The store to recover, {damaged!r}, does not exist.")
    if os.path.exists(target):
        raise InvalidParameterError(
            f"The recovered store's path {target!r} exists already; name a new file."
        )
    source = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
    try:
        sets, lost_sets = _readable_rows(
            source, "sample_sets", "set_key, model, prompt, config, created"
        )
        samples, lost_samples = _readable_rows(
            source, "samples", "set_key, idx, text, logp, logq, n_tokens, finish_reason"
        )
    finally:
        source.close()
    kept_sets = [row for row in sets if _set_row_consistent(row)]
    keys = {row[0] for row in kept_sets}
    kept_samples = [row for row in samples if row[0] in keys and _sample_row_valid(row)]
    with SampleStore(target) as store, store._db:
        store._db.executemany(
            "INSERT OR IGNORE INTO sample_sets (set_key, model, prompt, config, created) VALUES (?, ?, ?, ?, ?)",
            kept_sets,
        )
        store._db.executemany(
            "INSERT OR IGNORE INTO samples (set_key, idx, text, logp, logq, n_tokens, finish_reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            kept_samples,
        )
    return Recovery(
        sets=len(kept_sets),
        samples=len(kept_samples),
        lost_sets=lost_sets,
        lost_samples=lost_samples,
        dropped_sets=len(sets) - len(kept_sets),
        dropped_samples=len(samples) - len(kept_samples),
    )


def _readable_rows(
    db: sqlite3.Connection, table: str, columns: str
) -> tuple[list[tuple[Any, ...]], int | None]:
    """Every row of ``table`` that SQLite can read, and how many row ids in its range it could
    not (None when even ``max(rowid)`` is unreadable: then row ids up to a bound from the file's
    size are tried, since the store never deletes and its row ids are dense from 1)."""
    known = True
    try:
        top = db.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        known = False
        pages, size = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size"))
        top = pages * size // 8  # a record takes more than 8 bytes
    rows: list[tuple[Any, ...]] = []
    lost = 0
    ranges = [(1, int(top))]
    while ranges:
        low, high = ranges.pop()
        try:
            got = db.execute(
                f"SELECT rowid, {columns} FROM {table} WHERE rowid BETWEEN ? AND ? ORDER BY rowid",
                (low, high),
            ).fetchall()
        except sqlite3.DatabaseError:
            if low == high:
                lost += 1
            else:
                middle = (low + high) // 2
                ranges += [(middle + 1, high), (low, middle)]
            continue
        rows += [row[1:] for row in got]
    return rows, lost if known else None


def _set_row_consistent(row: tuple[Any, ...]) -> bool:
    key, model, prompt, config, created = row
    try:
        payload = json.dumps(
            {"model": model, "prompt": prompt, "config": json.loads(config)}, sort_keys=True
        )
    except (TypeError, ValueError):
        return False
    return (
        isinstance(created, float)
        and math.isfinite(created)
        and hashlib.sha256(payload.encode("utf-8")).hexdigest() == key
    )


def _sample_row_valid(row: tuple[Any, ...]) -> bool:
    _, idx, text, logp, logq, n_tokens, finish_reason = row
    if not isinstance(idx, int) or idx < 0 or not isinstance(text, str):
        return False
    if any(v is not None and not isinstance(v, float) for v in (logp, logq)):
        return False
    if n_tokens is not None and not isinstance(n_tokens, int):
        return False
    if finish_reason is not None and not isinstance(finish_reason, str):
        return False
    try:
        candidate = Candidate(
            text=text, logp=logp, logq=logq, n_tokens=n_tokens, finish_reason=finish_reason
        )
    except (TypeError, ValueError):
        return False
    return sample_problem(candidate) is None
