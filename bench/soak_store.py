"""Soak test of the sample store's promises, bounded in time and processes.

README ("Sampling") promises that a run killed at any moment (even ``kill -9``) resumes where it
stopped, loses nothing and duplicates nothing, that a stored set of n can grow, and
``metricwise.store`` adds that when two processes sample into one store, what each returns is
what the store holds. This script exercises those promises end to end, through the command line:

- a fake OpenAI-compatible server (``tests/fake_openai_server.py``, 127.0.0.1, deterministic
  samples per seed, ``--delay`` seconds per request so that a run lasts long enough to be killed
  in the middle) is started once, with a lifetime bound, and always stopped at the end;
- every round runs ``metricwise sample --backend openai`` writers as subprocesses into ONE shared
  store file: a plain writer, a writer killed with ``kill -9`` after a delay drawn from the seeded
  RNG (then, half the time, the same command again to resume), two writers started at once on
  overlapping prompt sets (both must exit 0), two at once with one of them killed, a writer sent
  SIGINT to itself and to its process group at once (as `timeout` and supervisors do: it must
  exit 130 within 3 s with no traceback, and half the time the same command resumes), or a
  damaged copy of the store (512 bytes overwritten inside a page of samples: a writer on it must
  exit 2 within 3 s naming the damage and `metricwise recover`, which must then copy intact rows
  that equal the store's, and a writer on the recovered copy completes it). The n asked
  for climbs over the rounds (1 up to ``-n``), so stored sets are extended, and concurrent writers
  may ask for different n;
- after every round, sqlite3 is asked directly: integrity_check is ok; no (set_key, idx) pair
  appears twice; every sample belongs to a stored set and every set has samples; a set's indices
  are 0..k-1 with no gap (whole prompts are committed at once); every finish_reason is one of
  stop/eos/length/guard and logp/logq are finite or null; and for every writer that exited 0,
  its ``--output`` JSONL equals exactly what the store holds for its prompts (text, logp, logq,
  n_tokens, finish_reason, indices 0..n-1 in order, one line per input line);
- at the end one healthy writer runs over all prompts at the final n, and a reference writer runs
  the same command into an empty store: every expected sample (prompts x n) must be in the soak
  store exactly once, nothing else may be there, and each must equal the reference (the fake
  server is deterministic, so a fresh run recomputes the ground truth).

It prints a short report and exits 0 when every check passed, 1 when one failed, 2 when the soak
could not run (the server did not start, or --max_seconds ran out before the final check), 130
on Ctrl-C.

    .venv/bin/python bench/soak_store.py [--rounds 40] [--prompts 40] [-n 24] [--seed 0]
                                         [--max_seconds 300] [--delay 0.03] [--keep]

At most two writers and the server run at once: the soak is meant to run beside other work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import selectors
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_SCRIPT = REPO_ROOT / "tests" / "fake_openai_server.py"
CLI_CODE = "import sys; from metricwise.cli import main; sys.exit(main(sys.argv[1:]))"
MODEL = "fake-model"
#: The store keys sets by "openai:<model>" for this backend (OpenAIBackend.signature).
SIGNATURE = f"openai:{MODEL}"
MAX_TOKENS = 8
FINISH_REASONS = ("stop", "eos", "length", "guard")
FIELDS = ("text", "logp", "logq", "n_tokens", "finish_reason")
#: Seconds one writer may run before it counts as hung (a healthy one takes 1-3 s here).
WRITER_TIMEOUT = 60.0
#: Seconds kept back from --max_seconds for the final writer, the reference run and the checks.
FINAL_RESERVE = 20.0
KINDS = ("plain", "kill", "concurrent", "concurrent_kill", "sigint2", "damaged")
#: Seconds a writer may take to exit after two SIGINTs, or to refuse a damaged store.
CLEAN_EXIT_BOUND = 3.0


@dataclass
class Timing:
    """How long writers take here, measured in round 0, to draw kill moments over a writer's life."""

    startup: float = 0.5  # a writer with nothing to sample: interpreter, imports, store, lookups
    full: float = 1.5  # a writer sampling one new index of every prompt, batch size 1

    def kill_delay(self, rng: random.Random, batch_size: int) -> float:
        # Requests of a batch run at once, so a batch of 2 samples about twice as fast. Delays
        # short of the start-up kill a writer before (or while) it opens the store: a moment too.
        life = self.startup + max(0.0, self.full - self.startup) / batch_size
        return rng.uniform(0.1, 1.0) * life


class Deadline:
    """The hard wall-clock bound of the whole soak; every wait is cut to what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def bound(self, seconds: float) -> float:
        return max(0.0, min(seconds, self.left()))


class SoakAborted(Exception):
    """The soak cannot go on (no server, out of time); not a finding about the store."""


class StoreMismatch(Exception):
    """The store holds something no check can even be phrased for (two sets for one prompt)."""


@dataclass
class Writer:
    """One ``metricwise sample`` subprocess and what it was asked for."""

    name: str
    prompts: list[str]
    n: int
    batch_size: int
    output: Path
    stderr_path: Path
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    returncode: int | None = None
    seconds: float = 0.0
    killed: bool = False

    def stderr_tail(self, chars: int = 800) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return "(no stderr)"


@dataclass
class Stats:
    rounds: int = 0
    planned: int = 0
    kinds: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    writers: int = 0
    killed: int = 0
    kills_mid_run: int = 0
    kills_before_commit: int = 0
    kills_after_work: int = 0
    kills_concurrent: int = 0
    kills_idle: int = 0
    finished_before_kill: int = 0
    concurrent_pairs: int = 0
    double_sigints: int = 0
    damaged_stores: int = 0
    outputs_equal: int = 0
    ns: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print(f"  FAIL: {message}", file=sys.stderr, flush=True)


# -- the fake server ------------------------------------------------------------------------------


@contextmanager
def fake_server(delay: float, lifetime: float, workdir: Path) -> Iterator[str]:
    """The fake server as a subprocess on 127.0.0.1; stopped on the way out, whatever happens."""
    log = open(workdir / "server.stderr", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SERVER_SCRIPT),
            "--port",
            "0",
            "--mode",
            "healthy",
            "--lifetime",
            f"{lifetime:.0f}",
            "--delay",
            str(delay),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=REPO_ROOT,
    )
    try:
        url = _read_line(proc, timeout=30.0)
        # The server must bind the loopback interface only: nothing else may reach it.
        if not url.startswith("http://127.0.0.1:"):
            raise SoakAborted(f"the fake server printed {url!r}, not an http://127.0.0.1 URL")
        yield url
    finally:
        _stop(proc, grace=5.0)
        log.close()


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first stdout line of ``proc``, waiting at most ``timeout`` seconds for it."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise SoakAborted(f"the fake server printed no URL within {timeout:.0f} s")
    # The server prints its URL in one flushed write, so a readable pipe holds the whole line.
    line = proc.stdout.readline().decode().strip()
    if not line:
        raise SoakAborted(f"the fake server exited (code {proc.poll()}) without printing its URL")
    return line


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)


# -- writers --------------------------------------------------------------------------------------


class Writers:
    """Starts ``metricwise sample`` subprocesses and remembers the live ones, to end them on exit."""

    def __init__(
        self, url: str, workdir: Path, seed: int, deadline: Deadline, stats: Stats
    ) -> None:
        self.url, self.workdir, self.seed, self.deadline, self.stats = (
            url,
            workdir,
            seed,
            deadline,
            stats,
        )
        self.live: list[Writer] = []
        self.count = 0
        self.env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "src"))

    def start(
        self,
        name: str,
        prompts: Sequence[str],
        n: int,
        batch_size: int,
        store: Path,
        *,
        own_group: bool = False,
    ) -> Writer:
        self.count += 1
        stem = self.workdir / f"w{self.count:03d}-{name}"
        inp = stem.with_suffix(".prompts.jsonl")
        # Ids are the line numbers: a prompt listed twice gets two ids and two output lines.
        inp.write_text(
            "".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(prompts))
        )
        output, err = stem.with_suffix(".out.jsonl"), stem.with_suffix(".stderr")
        cmd = [
            sys.executable,
            "-c",
            CLI_CODE,
            "sample",
            "--backend",
            "openai",
            "--model_args",
            f"base_url={self.url},server=generic",
            "--model",
            MODEL,
            "-n",
            str(n),
            "--max_tokens",
            str(MAX_TOKENS),
            "--seed",
            str(self.seed),
            "--input",
            str(inp),
            "--store",
            str(store),
            "--output",
            str(output),
            "--batch_size",
            str(batch_size),
            "-q",
        ]
        with open(err, "wb") as err_file:
            proc = subprocess.Popen(
                cmd,
                env=self.env,
                cwd=REPO_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err_file,
                # As in a terminal: a soak started in the background ignores SIGINT, and its
                # writers would inherit that.
                preexec_fn=_default_sigint,
                start_new_session=own_group,
            )
        writer = Writer(name, list(prompts), n, batch_size, output, err, proc)
        self.live.append(writer)
        self.stats.writers += 1
        return writer

    def wait(self, writer: Writer) -> int:
        """Wait for ``writer`` (bounded by WRITER_TIMEOUT and the deadline); a hung one is killed."""
        try:
            writer.returncode = writer.proc.wait(timeout=self.deadline.bound(WRITER_TIMEOUT))
        except subprocess.TimeoutExpired:
            writer.proc.kill()
            writer.returncode = writer.proc.wait(timeout=10)
            writer.seconds = time.monotonic() - writer.started
            self.live.remove(writer)
            if self.deadline.left() <= 0:
                raise SoakAborted(
                    f"--max_seconds ran out while {writer.name} was running"
                ) from None
            self.stats.fail(
                f"{writer.name} did not finish within {WRITER_TIMEOUT:.0f} s (killed); stderr: {writer.stderr_tail()}"
            )
            return writer.returncode
        writer.seconds = time.monotonic() - writer.started
        self.live.remove(writer)
        return writer.returncode

    def kill_after(self, writer: Writer, delay: float) -> None:
        """kill -9 ``writer`` ``delay`` seconds after it started, unless it has finished by then."""
        with suppress(subprocess.TimeoutExpired):
            writer.proc.wait(
                timeout=self.deadline.bound(max(0.0, writer.started + delay - time.monotonic()))
            )
        if writer.proc.poll() is None:
            writer.proc.send_signal(signal.SIGKILL)
            writer.killed = True
            self.stats.killed += 1
        else:
            self.stats.finished_before_kill += 1
        self.wait(writer)

    def stop_all(self) -> None:
        for writer in list(self.live):
            if writer.proc.poll() is None:
                writer.proc.kill()
            try:
                writer.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"soak: writer {writer.proc.pid} did not exit after SIGKILL", file=sys.stderr)
            self.live.remove(writer)


# -- checks through sqlite directly ---------------------------------------------------------------


@contextmanager
def connect(store: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection, closed on the way out (sqlite3's own context manager does not)."""
    # Read-only: the checks must not change what the writers left, nor recover it for them.
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30.0)
    try:
        yield db
    finally:
        db.close()


def check_store(store: Path, stats: Stats, where: str) -> None:
    """Store-wide invariants that must hold after any round, killed writers included."""
    if not store.exists():
        return  # every writer so far was killed before it opened the store
    with connect(store) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchall()
        shared = db.execute(
            "SELECT model, prompt, COUNT(*) FROM sample_sets GROUP BY model, prompt HAVING COUNT(*) > 1"
        ).fetchall()
        if shared:
            stats.fail(
                f"{where}: {len(shared)} prompts have several sets under one sampling config, e.g. {shared[:2]}"
            )
        if integrity != [("ok",)]:
            stats.fail(f"{where}: integrity_check says {integrity[:5]}")
        # The primary key forbids duplicates; count anyway, since it is the promise under test.
        dup = db.execute(
            "SELECT set_key, idx, COUNT(*) FROM samples GROUP BY set_key, idx HAVING COUNT(*) > 1"
        ).fetchall()
        if dup:
            stats.fail(
                f"{where}: {len(dup)} (set_key, idx) pairs stored more than once, e.g. {dup[:3]}"
            )
        orphans = db.execute(
            "SELECT COUNT(*) FROM samples s LEFT JOIN sample_sets t ON s.set_key = t.set_key "
            "WHERE t.set_key IS NULL OR s.set_key = ''"
        ).fetchone()[0]
        if orphans:
            stats.fail(f"{where}: {orphans} samples belong to no stored set")
        empty = db.execute(
            "SELECT COUNT(*) FROM sample_sets t WHERE NOT EXISTS (SELECT 1 FROM samples s WHERE s.set_key = t.set_key)"
        ).fetchone()[0]
        if empty:
            stats.fail(f"{where}: {empty} stored sets have no samples")
        gaps = db.execute(
            "SELECT set_key, MIN(idx), MAX(idx), COUNT(*) FROM samples GROUP BY set_key "
            "HAVING MIN(idx) != 0 OR MAX(idx) + 1 != COUNT(*)"
        ).fetchall()
        if gaps:
            stats.fail(f"{where}: {len(gaps)} sets whose indices are not 0..k-1, e.g. {gaps[:3]}")
        placeholders = ",".join("?" * len(FINISH_REASONS))
        bad = db.execute(
            f"SELECT COUNT(*) FROM samples WHERE finish_reason IS NULL OR finish_reason NOT IN ({placeholders})",
            FINISH_REASONS,
        ).fetchone()[0]
        if bad:
            stats.fail(f"{where}: {bad} samples with a finish_reason outside {FINISH_REASONS}")
        for name, value in db.execute(
            "SELECT 'logp', logp FROM samples UNION ALL SELECT 'logq', logq FROM samples"
        ):
            if value is not None and not (isinstance(value, float) and math.isfinite(value)):
                stats.fail(
                    f"{where}: a stored {name} is {value!r}, not a finite log-probability or null"
                )
                break
        texts = db.execute(
            "SELECT COUNT(*) FROM samples WHERE text IS NULL OR typeof(text) != 'text'"
        ).fetchone()[0]
        if texts:
            stats.fail(f"{where}: {texts} samples whose text is not a string")


def stored_sets(store: Path, prompts: Sequence[str]) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """(idx, candidate) rows of each prompt's set, in index order; a missing set is []."""
    out: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    with connect(store) as db:
        for prompt in dict.fromkeys(prompts):
            keys = db.execute(
                "SELECT set_key FROM sample_sets WHERE model = ? AND prompt = ?",
                (SIGNATURE, prompt),
            ).fetchall()
            if len(keys) > 1:
                # Every writer here uses one sampling config, so a prompt has one set.
                raise StoreMismatch(
                    f"prompt {prompt!r} has {len(keys)} sets under one sampling config"
                )
            rows = (
                []
                if not keys
                else db.execute(
                    "SELECT idx, text, logp, logq, n_tokens, finish_reason FROM samples WHERE set_key = ? ORDER BY idx",
                    (keys[0][0],),
                ).fetchall()
            )
            out[prompt] = [(r[0], dict(zip(FIELDS, r[1:], strict=True))) for r in rows]
    return out


def missing_samples(store: Path, prompts: Sequence[str], n: int) -> int:
    """How many of the samples ``prompts`` x ``n`` the store does not hold yet."""
    if not store.exists():
        return len(set(prompts)) * n
    sets = stored_sets(store, prompts)
    return sum(n - sum(1 for idx, _ in sets[p] if idx < n) for p in sets)


def check_output(writer: Writer, store: Path, stats: Stats) -> None:
    """A writer that exited 0 printed exactly what the store holds for its prompts."""
    where = f"{writer.name} (n={writer.n}, {len(writer.prompts)} prompts)"
    try:
        lines = [
            json.loads(line) for line in writer.output.read_text(encoding="utf-8").splitlines()
        ]
    except (OSError, ValueError) as exc:
        stats.fail(f"{where}: exited 0 but its output cannot be read as JSONL: {exc}")
        return
    if len(lines) != len(writer.prompts):
        stats.fail(f"{where}: {len(lines)} output lines for {len(writer.prompts)} input lines")
        return
    sets = stored_sets(store, writer.prompts)
    for i, (prompt, line) in enumerate(zip(writer.prompts, lines, strict=True)):
        if line.get("id") != i or line.get("prompt") != prompt:
            stats.fail(
                f"{where}: output line {i + 1} is for id {line.get('id')!r}, prompt {line.get('prompt')!r}, not {i}, {prompt!r}"
            )
            return
        got = [{k: c.get(k) for k in FIELDS} for c in line.get("candidates", [])]
        rows = [row for idx, row in sets[prompt] if idx < writer.n]
        indices = [idx for idx, _ in sets[prompt] if idx < writer.n]
        if indices != list(range(writer.n)):
            stats.fail(
                f"{where}: exited 0 but the store holds indices {indices} of prompt {prompt!r}, not 0..{writer.n - 1}"
            )
            return
        if got != rows:
            first = next(
                (j for j, (a, b) in enumerate(zip(got, rows, strict=False)) if a != b),
                min(len(got), len(rows)),
            )
            stats.fail(
                f"{where}: output line {i + 1} (prompt {prompt!r}) differs from the store at sample {first}: "
                f"output {got[first] if first < len(got) else None}, store {rows[first] if first < len(rows) else None}"
            )
            return
    stats.outputs_equal += 1


def finish(
    writer: Writer, writers: Writers, store: Path, stats: Stats, *, must_succeed: bool = True
) -> None:
    """Wait for a writer that nobody kills, then compare its output with the store."""
    rc = writers.wait(writer)
    if rc == 0:
        check_output(writer, store, stats)
    elif must_succeed:
        stats.fail(
            f"{writer.name} exited {rc} (n={writer.n}, batch {writer.batch_size}); stderr: {writer.stderr_tail()}"
        )


# -- rounds ---------------------------------------------------------------------------------------


def make_prompts(count: int, seed: int) -> list[str]:
    # A few awkward prompts (unicode, newline, quotes, long) check the round trip through JSON and SQL.
    odd = ["ünïcödé ✓ 数学", "two\nlines", 'a "quoted" \\ backslash', "x" * 300, "  spaces  "]
    return [
        f"soak {seed} prompt {i}: {odd[i % len(odd)] if i % 7 == 3 else 'Q: ' + str(i) + ' + 1 ='}"
        for i in range(count)
    ]


def subset(rng: random.Random, prompts: list[str], low: float = 0.6) -> list[str]:
    """A random share of the prompts, shuffled, sometimes with one prompt listed twice."""
    chosen = rng.sample(prompts, max(1, round(len(prompts) * rng.uniform(low, 1.0))))
    if len(chosen) > 1 and rng.random() < 0.3:
        # Identical prompts are sampled once and must both come out as the stored set.
        chosen.insert(rng.randrange(len(chosen)), chosen[rng.randrange(len(chosen))])
    return chosen


def plan(rounds: int, n: int, rng: random.Random) -> list[tuple[str, int]]:
    """(kind, n) per round: round 0 is plain at n=1 (it calibrates the kill delays), every kind
    comes up, and n climbs to ``n`` so that stored sets are extended again and again.

    A round has work only where it asks for more than is stored, so n grows first on the rounds
    that kill a writer (a kill of a writer with nothing to do tests nothing), then on the others.
    """
    cycle = ("kill", "concurrent", "concurrent_kill", "sigint2", "plain", "damaged")
    rest = [cycle[i % len(cycle)] for i in range(rounds - 1)]
    rng.shuffle(rest)
    kinds = ["plain", *rest]
    priority = {
        "kill": 0,
        "concurrent_kill": 0,
        "sigint2": 0,
        "concurrent": 1,
        "plain": 2,
        "damaged": 3,
    }
    later = sorted(range(1, rounds), key=lambda r: (priority[kinds[r]], rng.random()))
    growth = [0] * rounds
    for step in range(n - 1):  # n - 1 steps of one from n = 1, spread over the favoured rounds
        growth[later[step % len(later)]] += 1
    ns, current = [], 1
    for r in range(rounds):
        current += growth[r]
        ns.append(current)
    return list(zip(kinds, ns, strict=True))


def run_round(
    r: int,
    kind: str,
    n: int,
    prev_n: int,
    prompts: list[str],
    store: Path,
    writers: Writers,
    rng: random.Random,
    timing: Timing,
    stats: Stats,
) -> None:
    """One round of writers into ``store``; round 0 also measures ``timing``."""
    batch = rng.choice((1, 2))
    if r == 0:
        # Every prompt at batch size 1 (the slowest run), then the same command again, which
        # finds every set stored: its time is the start-up a kill delay has to get past.
        w = writers.start("r0-plain", prompts, n, 1, store)
        finish(w, writers, store, stats)
        again = writers.start("r0-again", prompts, n, 1, store)
        finish(again, writers, store, stats)
        if w.returncode == again.returncode == 0:
            timing.full, timing.startup = w.seconds, min(again.seconds, w.seconds)
        print(
            f"round {r:2d} plain       n={n:2d} {len(prompts):3d} prompts batch 1: rc {w.returncode}, {w.seconds:.1f} s; "
            f"again: rc {again.returncode}, {again.seconds:.1f} s",
            flush=True,
        )
        return
    if kind == "plain":
        chosen = subset(rng, prompts)
        w = writers.start(f"r{r}-plain", chosen, n, batch, store)
        finish(w, writers, store, stats)
        print(
            f"round {r:2d} plain       n={n:2d} {len(chosen):3d} prompts batch {batch}: rc {w.returncode}, {w.seconds:.1f} s",
            flush=True,
        )
        return

    if kind == "kill":
        chosen = subset(rng, prompts, low=0.8)
        before = missing_samples(store, chosen, n)
        # The delay is drawn from the seeded RNG over the whole life of a writer, start-up included.
        delay = timing.kill_delay(rng, batch)
        w = writers.start(f"r{r}-killed", chosen, n, batch, store)
        writers.kill_after(w, delay)
        after = missing_samples(store, chosen, n)
        if not w.killed:
            where = "it finished first"
            if w.returncode == 0:
                check_output(w, store, stats)
            else:
                stats.fail(
                    f"{w.name} exited {w.returncode} before its kill; stderr: {w.stderr_tail()}"
                )
        elif before == 0:
            where = "nothing to do"
            stats.kills_idle += 1
        elif after == before:
            where = "before its first commit"
            stats.kills_before_commit += 1
        elif after > 0:
            where = f"mid-run ({before - after} of {before} missing samples committed)"
            stats.kills_mid_run += 1
        else:
            where = "after its last commit"
            stats.kills_after_work += 1
        line = f"round {r:2d} kill        n={n:2d} {len(chosen):3d} prompts batch {batch}: kill -9 at {delay:.2f} s, {where}"
        if rng.random() < 0.5:
            # The same command again must resume: complete, and print what the store holds.
            resume = writers.start(f"r{r}-resume", chosen, n, batch, store)
            finish(resume, writers, store, stats)
            if missing_samples(store, chosen, n):
                stats.fail(
                    f"{resume.name}: exited {resume.returncode} but samples are still missing"
                )
            line += f"; resumed: rc {resume.returncode}, {resume.seconds:.1f} s"
        print(line, flush=True)
        return

    if kind == "sigint2":
        sigint_round(r, n, prompts, store, writers, rng, timing, stats, batch)
        return
    if kind == "damaged":
        damaged_round(r, n, prompts, store, writers, stats)
        return

    # Two writers at once on overlapping prompt sets (a fifth to three fifths shared); the second
    # walks the other way, so that both reach the shared prompts at about the same time.
    cut = max(1, round(len(prompts) * rng.uniform(0.2, 0.4)))
    a_prompts = prompts[: len(prompts) - cut]
    b_prompts = list(reversed(prompts[cut:]))
    n_b = rng.choice((n, prev_n))
    a = writers.start(f"r{r}-A", a_prompts, n, batch, store)
    b = writers.start(f"r{r}-B", b_prompts, n_b, rng.choice((1, 2)), store)
    stats.concurrent_pairs += 1
    if kind == "concurrent":
        finish(a, writers, store, stats)
        finish(b, writers, store, stats)
        print(
            f"round {r:2d} concurrent  n={n:2d}/{n_b:2d} {len(a_prompts)}+{len(b_prompts)} prompts: rc {a.returncode}/{b.returncode}",
            flush=True,
        )
        return
    victim, survivor = (a, b) if rng.random() < 0.5 else (b, a)
    delay = timing.kill_delay(rng, victim.batch_size)
    writers.kill_after(victim, delay)
    stats.kills_concurrent += victim.killed
    if not victim.killed:
        if victim.returncode == 0:
            check_output(victim, store, stats)
        else:
            stats.fail(
                f"{victim.name} exited {victim.returncode} before its kill; stderr: {victim.stderr_tail()}"
            )
    finish(survivor, writers, store, stats)
    state = "killed" if victim.killed else f"finished first (rc {victim.returncode})"
    print(
        f"round {r:2d} conc.+kill  n={n:2d}/{n_b:2d} {len(a_prompts)}+{len(b_prompts)} prompts: "
        f"{victim.name} {state} at {delay:.2f} s, {survivor.name} rc {survivor.returncode}",
        flush=True,
    )


def sigint_round(
    r: int,
    n: int,
    prompts: list[str],
    store: Path,
    writers: Writers,
    rng: random.Random,
    timing: Timing,
    stats: Stats,
    batch: int,
) -> None:
    """SIGINT to a writer and to its process group at once, mid-run: exit 130 within
    CLEAN_EXIT_BOUND, no traceback; the store is checked after the round as after any other."""
    chosen = subset(rng, prompts, low=0.8)
    delay = timing.kill_delay(rng, batch)
    w = writers.start(f"r{r}-sigint2", chosen, n, batch, store, own_group=True)
    with suppress(subprocess.TimeoutExpired):
        w.proc.wait(timeout=writers.deadline.bound(max(0.0, w.started + delay - time.monotonic())))
    where = "it finished first"
    if w.proc.poll() is None:
        w.proc.send_signal(signal.SIGINT)
        with suppress(ProcessLookupError):
            os.killpg(w.proc.pid, signal.SIGINT)
        sent = time.monotonic()
        rc = writers.wait(w)
        took = time.monotonic() - sent
        tail = w.stderr_tail()
        where = f"exit {rc} {took:.2f} s after two SIGINTs"
        stats.double_sigints += 1
        if rc != 130 or took > CLEAN_EXIT_BOUND or "Traceback" in tail or "Exception" in tail:
            stats.fail(
                f"{w.name}: two SIGINTs gave exit {rc} after {took:.2f} s (expected 130 within "
                f"{CLEAN_EXIT_BOUND:g} s, no traceback); stderr: {tail}"
            )
    else:
        writers.wait(w)
        if w.returncode == 0:
            check_output(w, store, stats)
        else:
            stats.fail(
                f"{w.name} exited {w.returncode} before its SIGINTs; stderr: {w.stderr_tail()}"
            )
    line = f"round {r:2d} sigint x2   n={n:2d} {len(chosen):3d} prompts batch {batch}: at {delay:.2f} s, {where}"
    if rng.random() < 0.5:
        resume = writers.start(f"r{r}-resume", chosen, n, batch, store)
        finish(resume, writers, store, stats)
        line += f"; resumed: rc {resume.returncode}, {resume.seconds:.1f} s"
    print(line, flush=True)


def damaged_round(
    r: int, n: int, prompts: list[str], store: Path, writers: Writers, stats: Stats
) -> None:
    """A copy of the store with a damaged page of samples: refused with exit 2 and a message;
    `metricwise recover` copies rows equal to the store's; a writer completes the recovered copy.
    The soak store itself is left as it was."""
    copy = writers.workdir / f"r{r}-damaged.sqlite"
    with connect(store) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        # A consistent snapshot of the store as one file (the WAL folded in), taken read-only.
        db.execute(f"VACUUM INTO '{copy}'")
    # VACUUM INTO leaves no free page, so a page two thirds in is a b-tree page (a table's or
    # an index's), whose damaged header SQLite's check finds.
    page = (copy.stat().st_size // page_size) * 2 // 3
    with open(copy, "r+b") as f:
        f.seek(page * page_size)
        f.write(bytes(range(256)) * 2)
    w = writers.start(f"r{r}-on-damaged", prompts, n, 2, copy)
    started = time.monotonic()
    rc = writers.wait(w)
    took = time.monotonic() - started
    tail = w.stderr_tail()
    stats.damaged_stores += 1
    if (
        rc != 2
        or "is damaged" not in tail
        or "metricwise recover" not in tail
        or "Traceback" in tail
    ):
        stats.fail(f"{w.name}: a damaged store gave exit {rc} after {took:.1f} s; stderr: {tail}")
    recovered = copy.with_name(f"r{r}-recovered.sqlite")
    done = subprocess.run(
        [sys.executable, "-c", CLI_CODE, "recover", str(copy), str(recovered)],
        env=writers.env,
        capture_output=True,
        text=True,
        timeout=writers.deadline.bound(WRITER_TIMEOUT),
    )
    if done.returncode != 0:
        stats.fail(f"metricwise recover exited {done.returncode}: {done.stderr[-500:]}")
        print(
            f"round {r:2d} damaged     page {page + 1}: exit {rc} in {took:.1f} s; recover failed",
            flush=True,
        )
        return
    held, got = stored_sets(store, prompts), stored_sets(recovered, prompts)
    for prompt in prompts:
        have = dict(held[prompt])
        for i, sample in got[prompt]:
            if have.get(i) != sample:
                stats.fail(f"recovered sample {i} of {prompt!r} differs from the store's")
                break
    copied = sum(len(v) for v in got.values())
    heal = writers.start(f"r{r}-on-recovered", prompts, n, 2, recovered)
    finish(heal, writers, recovered, stats)
    print(
        f"round {r:2d} damaged     page {page + 1}: exit {rc} in {took:.1f} s; recovered {copied} of "
        f"{sum(len(v) for v in held.values())} samples; completed: rc {heal.returncode}",
        flush=True,
    )


def final_check(
    prompts: list[str], n: int, store: Path, fresh: Path, writers: Writers, stats: Stats
) -> dict[str, int]:
    """A healthy writer completes the soak store; a reference run fills an empty one; they must agree."""
    final = writers.start("final", prompts, n, 2, store)
    reference = writers.start("reference", prompts, n, 2, fresh)
    finish(final, writers, store, stats)
    finish(reference, writers, fresh, stats)
    check_store(store, stats, "after the final writer")
    counts = {
        "expected": len(prompts) * n,
        "stored": 0,
        "duplicated": 0,
        "missing": 0,
        "unexpected": 0,
        "differ": 0,
    }
    with connect(store) as db:
        counts["stored"] = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        counts["duplicated"] = db.execute(
            "SELECT COALESCE(SUM(c - 1), 0) FROM (SELECT COUNT(*) AS c FROM samples GROUP BY set_key, idx)"
        ).fetchone()[0]
        asked = {(SIGNATURE, p) for p in prompts}
        other_sets = sum(
            1
            for row in db.execute("SELECT model, prompt FROM sample_sets")
            if tuple(row) not in asked
        )
    if other_sets:
        stats.fail(
            f"the store holds {other_sets} sets for prompts or models the soak never asked for"
        )
    soak_sets, fresh_sets = stored_sets(store, prompts), stored_sets(fresh, prompts)
    for prompt in prompts:
        have = dict(soak_sets[prompt])
        truth = dict(fresh_sets[prompt])
        if sorted(truth) != list(range(n)):
            stats.fail(
                f"the reference store holds indices {sorted(truth)} of prompt {prompt!r}, not 0..{n - 1}"
            )
        counts["missing"] += sum(1 for i in range(n) if i not in have)
        counts["unexpected"] += sum(1 for i in have if not 0 <= i < n)
        differ = [i for i in range(n) if i in have and i in truth and have[i] != truth[i]]
        if differ:
            counts["differ"] += len(differ)
            i = differ[0]
            stats.fail(
                f"prompt {prompt!r} sample {i}: the soak store holds {have[i]}, a fresh run gives {truth[i]}"
            )
    if counts["stored"] != counts["expected"]:
        stats.fail(f"the store holds {counts['stored']} samples, {counts['expected']} expected")
    for key in ("duplicated", "missing", "unexpected"):
        if counts[key]:
            stats.fail(f"{counts[key]} samples {key}")
    return counts


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=40,
        help="rounds of writers into the shared store (>= 4: every kind of round)",
    )
    p.add_argument("--prompts", type=int, default=40, help="distinct prompts")
    p.add_argument(
        "-n",
        "--n",
        dest="n",
        type=int,
        default=24,
        help="samples per prompt in the last rounds and the final check",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the plan, the kill delays and the sampling"
    )
    p.add_argument(
        "--max_seconds",
        "--max-seconds",
        dest="max_seconds",
        type=float,
        default=300.0,
        help="hard wall-clock bound of the whole soak",
    )
    p.add_argument(
        "--delay",
        type=float,
        default=0.03,
        help="seconds the fake server sleeps per request, so kills land mid-run",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (store, inputs, outputs, stderr)",
    )
    args = p.parse_args(argv)
    if (
        args.rounds < 4
        or args.prompts < 4
        or args.n < 2
        or args.max_seconds <= FINAL_RESERVE
        or args.delay < 0
    ):
        p.error(
            f"need --rounds >= 4, --prompts >= 4, -n >= 2, --max_seconds > {FINAL_RESERVE:.0f} and --delay >= 0"
        )
    return args


def soak(
    args: argparse.Namespace, workdir: Path, stats: Stats, deadline: Deadline
) -> dict[str, int]:
    rng = random.Random(args.seed)
    prompts = make_prompts(args.prompts, args.seed)
    store, fresh = workdir / "store.sqlite", workdir / "fresh.sqlite"
    schedule = plan(args.rounds, args.n, rng)
    stats.planned = len(schedule)
    # The server outlives the soak's bound a little, never much: it dies by itself if we cannot stop it.
    with fake_server(args.delay, args.max_seconds + 30.0, workdir) as url:
        writers = Writers(url, workdir, args.seed, deadline, stats)
        try:
            timing = Timing()
            prev_n = schedule[0][1]
            for r, (kind, n) in enumerate(schedule):
                if deadline.left() < FINAL_RESERVE + 2 * timing.full + 5:
                    print(
                        f"soak: --max_seconds leaves no time for round {r}; going to the final check",
                        flush=True,
                    )
                    break
                run_round(r, kind, n, prev_n, prompts, store, writers, rng, timing, stats)
                check_store(store, stats, f"after round {r}")
                stats.rounds += 1
                stats.kinds[kind] += 1
                stats.ns.append(n)
                prev_n = n
            if deadline.left() < 5:
                raise SoakAborted("--max_seconds ran out before the final check")
            return final_check(prompts, args.n, store, fresh, writers, stats)
        finally:
            writers.stop_all()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a CI timeout, `timeout 600 ...`) cleans up like Ctrl-C: writers and server stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    deadline = Deadline(args.max_seconds)
    stats = Stats()
    workdir = Path(tempfile.mkdtemp(prefix="metricwise-soak-"))
    print(
        f"soak: seed {args.seed}, {args.rounds} rounds, {args.prompts} prompts, n up to {args.n}, server delay {args.delay} s, in {workdir}",
        flush=True,
    )
    counts: dict[str, int] = {}
    code = 0
    try:
        counts = soak(args, workdir, stats, deadline)
    except SoakAborted as exc:
        print(f"soak: aborted: {exc}", file=sys.stderr)
        code = 2
    except StoreMismatch as exc:
        stats.fail(str(exc))
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        code = 130
    finally:
        if args.keep or stats.failures:
            print(f"soak: kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    wall = time.monotonic() - started
    print("\n== soak report ==")
    grown = sum(1 for a, b in zip(stats.ns, stats.ns[1:], strict=False) if b > a)
    n_range = f"n {stats.ns[0]} to {stats.ns[-1]}, grown in {grown} rounds" if stats.ns else "no n"
    cut = (
        f" of {stats.planned} planned, cut short by --max_seconds"
        if stats.rounds < stats.planned
        else ""
    )
    print(
        f"rounds            {stats.rounds}{cut} ({', '.join(f'{k} {v}' for k, v in stats.kinds.items())}; {n_range})"
    )
    print(f"writers started   {stats.writers}")
    print(
        f"killed with -9    {stats.killed}: {stats.kills_concurrent} beside a second writer; alone: {stats.kills_mid_run} mid-run, "
        f"{stats.kills_before_commit} before the first commit, {stats.kills_after_work} after the last, "
        f"{stats.kills_idle} with nothing to do; "
        f"{stats.finished_before_kill} writers finished before their kill"
    )
    print(f"concurrent pairs  {stats.concurrent_pairs}")
    print(
        f"double SIGINTs    {stats.double_sigints} mid-run (exit 130 within {CLEAN_EXIT_BOUND:g} s expected)"
    )
    print(f"damaged stores    {stats.damaged_stores} refused, recovered and completed")
    if counts:
        print(
            f"samples           expected {counts['expected']}, stored {counts['stored']}, duplicated {counts['duplicated']}, "
            f"missing {counts['missing']}, unexpected {counts['unexpected']}, differ from a fresh run {counts['differ']}"
        )
    print(
        f"outputs equal     {stats.outputs_equal} (every writer that exited 0 printed what the store holds)"
    )
    print(f"wall time         {wall:.1f} s (bound {args.max_seconds:.0f} s)")
    if stats.killed and not stats.kills_mid_run:
        print("warning: no kill landed mid-run; raise --prompts or --delay", file=sys.stderr)
    if stats.failures:
        print(f"FAILED: {len(stats.failures)} checks", file=sys.stderr)
        for message in stats.failures[:20]:
            print(f"  - {message}", file=sys.stderr)
        return 1
    if code:
        return code
    print("OK: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
