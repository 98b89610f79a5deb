"""The sample store: nothing re-sampled, nothing duplicated, nothing lost to kill -9."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from metricwise import Candidate, SampleSet, SamplingConfig
from metricwise.errors import InvalidParameterError, StoreDamagedError
from metricwise.store import SampleStore, recover_store, set_key


class CountingBackend:
    """A deterministic stand-in that records what it is asked for (the store's mechanics only)."""

    signature = "counting"

    def __init__(self):
        self.calls = []

    def sample(self, prompts, config, *, start=0):
        self.calls.append((tuple(prompts), start, config.n))
        return [
            SampleSet(
                candidates=tuple(
                    Candidate(f"{p}#{i}", logp=-1.0 * i, logq=-1.0, n_tokens=1, finish_reason="eos")
                    for i in range(start, config.n)
                ),
                prompt=p,
            )
            for p in prompts
        ]

    def greedy(self, prompts, config):
        self.calls.append((tuple(prompts), "greedy"))
        return [
            Candidate(f"{p}#greedy", logp=-0.5, logq=0.0, n_tokens=1, finish_reason="eos")
            for p in prompts
        ]


def test_stored_sets_are_never_sampled_again_and_can_grow(tmp_path):
    backend = CountingBackend()
    prompts = ["a", "b", "c", "a"]
    with SampleStore(tmp_path / "s.db") as store:
        first = store.sample(backend, prompts, SamplingConfig(n=2), batch_size=2)
        assert [c.text for c in first[3].candidates] == ["a#0", "a#1"]
        assert backend.calls == [(("a", "b"), 0, 2), (("c",), 0, 2)]  # the repeated prompt once
        again = store.sample(backend, prompts, SamplingConfig(n=2))
        assert again == first
        assert len(backend.calls) == 2
        grown = store.sample(backend, prompts, SamplingConfig(n=4), batch_size=8)
        assert backend.calls[-1] == (("a", "b", "c"), 2, 4)  # only indices 2..3
        assert [c.text for c in grown[0].candidates] == ["a#0", "a#1", "a#2", "a#3"]
        assert store.count() == 12


def test_other_settings_are_other_sets(tmp_path):
    backend = CountingBackend()
    with SampleStore(tmp_path / "s.db") as store:
        store.sample(backend, ["a"], SamplingConfig(n=2, temperature=1.0))
        store.sample(backend, ["a"], SamplingConfig(n=2, temperature=0.7))
        store.sample(backend, ["a"], SamplingConfig(n=2, seed=1))
        assert len(backend.calls) == 3
    assert set_key("m", "a", SamplingConfig(n=2)) == set_key("m", "a", SamplingConfig(n=64))
    assert set_key("m", "a", SamplingConfig()) != set_key("m2", "a", SamplingConfig())


def test_greedy_is_stored_too(tmp_path):
    backend = CountingBackend()
    with SampleStore(tmp_path / "s.db") as store:
        out = store.greedy(backend, ["x", "y"], SamplingConfig(n=8))
        assert [c.text for c in out] == ["x#greedy", "y#greedy"]
        store.greedy(backend, ["x", "y"], SamplingConfig(n=16))
        assert len(backend.calls) == 1


def test_export_jsonl(tmp_path):
    with SampleStore(tmp_path / "s.db") as store:
        store.sample(CountingBackend(), ["a", "b"], SamplingConfig(n=2))
        sink = io.StringIO()
        assert store.export_jsonl(sink) == 2
    records = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert records[0]["prompt"] == "a"
    assert [c["text"] for c in records[0]["candidates"]] == ["a#0", "a#1"]
    assert "n" not in records[0]["config"]


class FailingBackend(CountingBackend):
    """Returns a failure as if it were a sample (what a backend must never do)."""

    def sample(self, prompts, config, *, start=0):
        sets = super().sample(prompts, config, start=start)
        bad = Candidate("", finish_reason="error")
        return [SampleSet(candidates=(*s.candidates[:-1], bad), prompt=s.prompt) for s in sets]


def test_a_failure_is_never_stored(tmp_path):
    from metricwise.errors import BackendError

    with SampleStore(tmp_path / "s.db") as store:
        with pytest.raises(BackendError, match="finish reason 'error'"):
            store.sample(FailingBackend(), ["a"], SamplingConfig(n=2))
        assert store.count() == 0
        for bad in (
            Candidate("x", logp=float("nan"), finish_reason="eos"),
            Candidate("x", finish_reason="guard", logq=float("inf")),
        ):
            with pytest.raises(BackendError, match="not stored"):
                store.add("m", "a", SamplingConfig(n=1), [(0, bad)])
        assert store.count() == 0
        # The next run asks again and completes the set.
        assert len(store.sample(CountingBackend(), ["a"], SamplingConfig(n=2))[0]) == 2


class RacingBackend(CountingBackend):
    """While it samples, another writer commits the same samples with other texts first."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def sample(self, prompts, config, *, start=0):
        with SampleStore(self.path) as other:
            for p in prompts:
                other.add(
                    self.signature,
                    p,
                    config,
                    [
                        (i, Candidate(f"{p}#{i} (first writer)", finish_reason="eos"))
                        for i in range(start, config.n)
                    ],
                )
        return super().sample(prompts, config, start=start)


def test_what_a_run_returns_is_what_the_store_holds(tmp_path):
    """Two writers on one store used to return each its own samples while the store kept the
    first; a rerun then gave different output."""
    path = tmp_path / "s.db"
    with SampleStore(path) as store:
        got = store.sample(RacingBackend(path), ["a", "b"], SamplingConfig(n=2), batch_size=1)
        again = store.sample(CountingBackend(), ["a", "b"], SamplingConfig(n=2))
    assert got == again
    assert got[0].texts == ["a#0 (first writer)", "a#1 (first writer)"]


def test_a_writer_skips_what_another_committed_since_it_started(tmp_path):
    path = tmp_path / "s.db"
    config = SamplingConfig(n=2)

    class SlowStart(CountingBackend):
        def sample(self, prompts, config, *, start=0):
            if prompts == ["a"]:  # meanwhile another process finished "b"
                with SampleStore(path) as other:
                    other.sample(CountingBackend(), ["b"], config)
            return super().sample(prompts, config, start=start)

    backend = SlowStart()
    with SampleStore(path) as store:
        store.sample(backend, ["a", "b"], config, batch_size=1)
    assert [call[0] for call in backend.calls] == [("a",)]  # "b" was not sampled twice


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path):
    bad = tmp_path / "not.db"
    bad.write_text("hello, I am text " * 100)
    with pytest.raises(Exception, match="cannot be opened as SQLite"):
        SampleStore(bad)


PAGE = 4096


def damaged_store(path: Path, n_prompts: int = 200, n: int = 8) -> tuple[Path, int]:
    """A store of ``n_prompts`` x ``n`` samples (CountingBackend's) with 512 bytes overwritten at
    the start of the page holding prompt 100's samples (a leaf of the samples table); returns
    the path and that page's number (from 1, as SQLite counts)."""
    config = SamplingConfig(n=n, max_tokens=4, seed=0)
    with SampleStore(path) as store:
        store.sample(CountingBackend(), [f"prompt {i}" for i in range(n_prompts)], config)
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    assert len(data) % PAGE == 0
    page = data.index(b"prompt 100#3") // PAGE  # 0-based
    with open(path, "r+b") as f:
        f.seek(page * PAGE)
        f.write(bytes(range(256)) * 2)
    return path, page + 1


def test_a_damaged_page_is_refused_when_the_store_opens(tmp_path):
    path, _ = damaged_store(tmp_path / "store.sqlite")
    with pytest.raises(StoreDamagedError) as refused:
        SampleStore(path)
    message = str(refused.value)
    # SQLite either lists what its check found or stops at the first damaged page it meets.
    assert re.search(
        r"is damaged \(SQLite(: database disk image is malformed|'s quick_check: Page \d+)", message
    )
    assert "nothing was written to it" in message
    assert f"metricwise recover {path} {tmp_path / 'store'}.recovered.sqlite" in message


def test_a_damaged_page_met_while_reading_is_refused_the_same_way(tmp_path, monkeypatch):
    """A store too large for the check at opening meets the damage when it reads the page."""
    import metricwise.store

    path, _ = damaged_store(tmp_path / "store.sqlite")
    monkeypatch.setattr(metricwise.store, "QUICK_CHECK_MAX_BYTES", 0)
    with SampleStore(path) as store:
        config = SamplingConfig(n=8, max_tokens=4, seed=0)
        assert len(store.lookup("counting", "prompt 1", config)) == 8  # an intact page
        with pytest.raises(StoreDamagedError, match=r"is damaged .*malformed.*rolled back"):
            store.sample(CountingBackend(), [f"prompt {i}" for i in range(200)], config)


def test_recover_copies_the_intact_rows_and_a_rerun_draws_only_the_lost(tmp_path):
    path, _ = damaged_store(tmp_path / "store.sqlite")
    recovered = tmp_path / "recovered.sqlite"
    recovery = recover_store(path, recovered)
    assert recovery.sets == 200 and recovery.lost_sets == 0
    assert 0 < recovery.lost_samples < 100 and recovery.samples == 1600 - recovery.lost_samples
    with pytest.raises(InvalidParameterError, match="exists already"):
        recover_store(path, recovered)
    config = SamplingConfig(n=8, max_tokens=4, seed=0)
    backend = CountingBackend()
    with SampleStore(recovered) as store:  # passes quick_check
        assert store.count() == recovery.samples
        prompts = [f"prompt {i}" for i in range(200)]
        sets = store.sample(backend, prompts, config)
    # Only the prompts that lost samples are asked again, from their first lost index, and
    # every sample is the one a clean run gives.
    asked = sum(8 - start for batch, start, _ in backend.calls for _ in batch)
    assert asked > 0 and sum(len(batch) for batch, _, _ in backend.calls) < 10
    assert asked >= recovery.lost_samples
    assert [[c.text for c in s.candidates] for s in sets] == [
        [f"p#{i}".replace("p", p) for i in range(8)] for p in prompts
    ]


def test_recover_drops_a_row_whose_content_was_damaged_but_still_parses(tmp_path):
    """A damaged byte inside a prompt leaves a row SQLite reads; its key no longer matches."""
    path = tmp_path / "store.sqlite"
    with SampleStore(path) as store:
        store.sample(CountingBackend(), ["prompt A", "prompt B"], SamplingConfig(n=2))
        store._db.execute("UPDATE sample_sets SET prompt = 'prompt C' WHERE prompt = 'prompt B'")
        store._db.commit()
    recovery = recover_store(path, tmp_path / "new.sqlite")
    assert (recovery.sets, recovery.dropped_sets) == (1, 1)
    assert (recovery.samples, recovery.dropped_samples) == (2, 2)


WORKER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from tiny_lm import tiny_model_and_tokenizer
    from metricwise import SamplingConfig
    from metricwise.backends.hf import HFBackend
    from metricwise.store import SampleStore

    model, tokenizer = tiny_model_and_tokenizer()
    backend = HFBackend(model, tokenizer=tokenizer, signature="hf:tiny-test")
    prompts = [f"the cat number {{i}} sat on" for i in range(12)]
    store = SampleStore(sys.argv[1])

    def progress(done, total):
        print(f"done {{done}}", flush=True)
        time.sleep(float(sys.argv[2]))

    store.sample(backend, prompts, SamplingConfig(n=4, max_tokens=6, seed=7), batch_size=1, progress=progress)
    print("finished", flush=True)
    """
)


@pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")
def test_kill_9_then_resume_loses_and_duplicates_nothing(tmp_path):
    pytest.importorskip("torch")
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    db = tmp_path / "killed.db"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db), "0.3"], stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("done") and int(line.split()[1]) >= 3:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with SampleStore(db) as store:
        partial = store.count()
    assert 12 <= partial < 48 and partial % 4 == 0  # whole prompts only

    resumed = subprocess.run(
        [sys.executable, str(script), str(db), "0"], capture_output=True, text=True, timeout=300
    )
    assert "finished" in resumed.stdout, resumed.stderr
    first_report = int(resumed.stdout.split()[1])
    assert first_report == partial // 4  # it started from what was stored

    from metricwise.backends.hf import HFBackend
    from tiny_lm import tiny_model_and_tokenizer

    model, tokenizer = tiny_model_and_tokenizer()
    with SampleStore(tmp_path / "clean.db") as clean_store:
        clean_store.sample(
            HFBackend(model, tokenizer=tokenizer, signature="hf:tiny-test"),
            [f"the cat number {i} sat on" for i in range(12)],
            SamplingConfig(n=4, max_tokens=6, seed=7),
            batch_size=1,
        )
    with SampleStore(db) as resumed_store, SampleStore(tmp_path / "clean.db") as clean_store:
        assert resumed_store.count() == clean_store.count() == 48
        # Per-sample seeds: the interrupted-and-resumed run equals the uninterrupted one.
        assert list(resumed_store.iter_sets()) == list(clean_store.iter_sets())
