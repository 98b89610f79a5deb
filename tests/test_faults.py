"""Faults: servers that misbehave end a run within a stated bound, with a clear message and exit 3,
store nothing wrong, and a rerun against a healthy server completes exactly the missing samples.

Every server here is a fake on 127.0.0.1 (tests/fake_openai_server.py) with a bounded lifetime.
The command under test is ``metricwise sample --backend openai`` with ``--timeout 1
--max_retries 1`` and a 0.05 s backoff, so a failing request gives up after at most
2 attempts x 1 s + 0.055 s; :data:`BOUND` leaves room for a loaded machine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_openai_server import FakeServer
from metricwise.cli import main

#: Seconds a failing run may take with --timeout 1 --max_retries 1 (2.06 s of requests at most).
BOUND = 6.0
N = 3
PROMPTS = [f"prompt {i}" for i in range(4)]
#: Prompts 2 and 3 carry the marker: the fault hits them, prompts 0 and 1 succeed first.
FAULTY = {"prompt 2", "prompt 3"}
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server():
    s = FakeServer(fault_marker="prompt 2", hang_seconds=8.0, lifetime=120.0)
    yield s
    s.close()


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text(
        "".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(prompts))
    )
    return path


def sample_args(url: str, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "sample",
        "--backend", "openai",
        "--model", "fake-model",
        "--model_args", f"base_url={url},server=generic,backoff=0.05",
        "-n", str(N),
        "--max_tokens", "4",
        "--input", str(write_prompts(tmp_path / "prompts.jsonl", PROMPTS)),
        "--store", str(tmp_path / "store.sqlite"),
        "--batch_size", "1",
        "--timeout", "1",
        "--max_retries", "1",
        "--output", str(tmp_path / "out.jsonl"),
        "-q",
        *extra,
    ]  # fmt: skip


def stored_rows(tmp_path: Path) -> list[tuple[str, int, str, str | None]]:
    """(prompt, index, text, finish_reason) of every stored sample."""
    with sqlite3.connect(tmp_path / "store.sqlite") as db:
        return db.execute(
            "SELECT s.prompt, x.idx, x.text, x.finish_reason FROM samples x JOIN sample_sets s USING (set_key) ORDER BY 1, 2"
        ).fetchall()


FAILING = {
    "error500": "HTTP 500: internal error",
    "hang": "no complete answer within 1 s",
    "trickle": "no complete answer within 1 s",
    "drop": "dropped the connection",
    "broken_json": "not JSON",
    "html": "HTTP 502: <html>",
    "html200": "an HTML page",
    "wrong_shape": "choice 0 is 1, not an object",
    "empty_choices": "an empty 'choices' list",
    "null_logprobs": "log-probability None",
    "string_logprobs": "log-probability '-0.5'",
    "nan_logprobs": "log-probability nan",
    "abort": "finish_reason 'abort'",
}


@pytest.mark.parametrize("mode", sorted(FAILING))
def test_a_failing_server_ends_the_run_cleanly_and_a_rerun_completes_it(
    mode, server, tmp_path, capsys
):
    server.mode = mode
    started = time.monotonic()
    code = main(sample_args(server.url, tmp_path))
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 3, err
    assert elapsed < BOUND, f"{mode}: {elapsed:.1f} s"
    assert "127.0.0.1" in err and FAILING[mode] in err, err
    assert "Traceback" not in err
    # Prompts 0 and 1 were committed before the fault; nothing of prompts 2 and 3 is stored.
    rows = stored_rows(tmp_path)
    assert sorted({r[0] for r in rows}) == ["prompt 0", "prompt 1"]
    assert len(rows) == 2 * N and all(r[3] in ("stop", "eos", "length") for r in rows)
    before = len(server.posts())

    server.mode = "healthy"
    assert main(sample_args(server.url, tmp_path)) == 0
    asked = server.posts()[before:]
    assert sorted(b["prompt"] for b in asked) == [
        "prompt 2",
        "prompt 3",
    ]  # exactly the missing ones
    assert sum(b["n"] for b in asked) == 2 * N
    rows = stored_rows(tmp_path)
    assert len(rows) == len(PROMPTS) * N
    printed = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["prompt"], c["text"]) for r in printed for c in r["candidates"]] == [
        (r[0], r[2]) for r in rows
    ]


def test_500s_then_success_are_retried(server, tmp_path, capsys):
    server.mode = "error500:1"
    args = sample_args(server.url, tmp_path)
    args[args.index("--max_retries") + 1] = "2"
    assert main(args) == 0, capsys.readouterr().err
    assert len(stored_rows(tmp_path)) == len(PROMPTS) * N


def test_fewer_choices_than_asked_are_asked_for_one_by_one(server, tmp_path, capsys):
    reference, healthy_dir = FakeServer(lifetime=60.0), tmp_path / "healthy"
    healthy_dir.mkdir()
    try:
        assert main(sample_args(reference.url, healthy_dir)) == 0
    finally:
        reference.close()
    expected = stored_rows(healthy_dir)
    server.mode = "fewer_choices"
    assert main(sample_args(server.url, tmp_path)) == 0, capsys.readouterr().err
    assert stored_rows(tmp_path) == expected  # the same seeds give the same samples


def test_the_wall_clock_budget_is_a_failure_not_samples(server, tmp_path, capsys):
    """A batch that outlives --max_seconds stores nothing (it used to store empty 'guard' samples
    and exit 0, and no later run asked again)."""
    server.mode = "hang"
    args = sample_args(server.url, tmp_path, "--max_seconds", "0.5")
    args[args.index("--timeout") + 1] = "5"
    started = time.monotonic()
    assert main(args) == 3
    assert time.monotonic() - started < BOUND
    err = capsys.readouterr().err
    assert "wall-clock budget of 0.5 s" in err and "resumes" in err
    rows = stored_rows(tmp_path)
    assert {r[0] for r in rows} == {"prompt 0", "prompt 1"} and "guard" not in {r[3] for r in rows}


def _spawn(args: list[str], tmp_path: Path, *, own_group: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    code = "import sys; from metricwise.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        # As in a terminal: a test run started in the background (`make test &`, nohup) ignores
        # SIGINT, the child would inherit that, and Ctrl-C would never reach it.
        preexec_fn=_default_sigint,
        start_new_session=own_group,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _many_prompts_args(url: str, tmp_path: Path) -> list[str]:
    args = sample_args(url, tmp_path)
    write_prompts(tmp_path / "prompts.jsonl", [f"prompt 2 #{i}" for i in range(16)])
    args[args.index("--batch_size") + 1] = "16"
    args[args.index("--timeout") + 1] = "60"
    return [*args, "--max_seconds", "120"]


def test_ctrl_c_exits_at_once_while_requests_hang(server, tmp_path):
    """Ctrl-C used to wait for the requests still running in worker threads (21 s)."""
    server.mode = "hang"
    # The hang outlasts the wait below, so that on a loaded machine, where the process starts
    # slowly, Ctrl-C still meets hanging requests (not a server that closed them meanwhile).
    server.hang_seconds = 120.0
    process = _spawn(_many_prompts_args(server.url, tmp_path), tmp_path)
    deadline = time.monotonic() + 60
    while len(server.posts()) < 8 and time.monotonic() < deadline:  # every worker is waiting
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    _, err = process.communicate(timeout=30)
    assert time.monotonic() - interrupted < 3.0, err
    assert process.returncode == 130 and "interrupted" in err
    assert not (tmp_path / "store.sqlite").exists() or stored_rows(tmp_path) == []


@pytest.mark.parametrize("gap", [0.0, 0.001, 0.003, 0.006, 0.01, 0.02])
def test_two_sigints_at_once_end_the_run_as_cleanly_as_one(server, tmp_path, gap):
    """What `timeout` and supervisors do: SIGINT to the process and to its group. The second
    used to land in the first's cleanup: 9 of 12 trials hung until killed (worker threads left
    on network reads, joined at exit) or died of SIGINT in the interpreter's shutdown."""
    server.mode = "hang"
    server.hang_seconds = 120.0
    process = _spawn(_many_prompts_args(server.url, tmp_path), tmp_path, own_group=True)
    deadline = time.monotonic() + 60
    while len(server.posts()) < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    time.sleep(gap)
    os.killpg(process.pid, signal.SIGINT)
    interrupted = time.monotonic()
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert time.monotonic() - interrupted < 3.0, err
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and "Exception ignored" not in err
    assert not (tmp_path / "store.sqlite").exists() or stored_rows(tmp_path) == []


def test_a_sigint_during_the_cleanup_of_the_first_is_ignored():
    """The CLI's one signal path: the first SIGINT raises KeyboardInterrupt, the cleanup it
    starts cannot be interrupted by a second, and SIGINT stays ignored after the command (the
    process is ending); a command that was not interrupted puts the old handler back."""
    from metricwise.cli import _interrupt_once

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cleaned = False
        with pytest.raises(KeyboardInterrupt), _interrupt_once():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # never reached: the first SIGINT raises here
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # the second, inside the cleanup
                time.sleep(0.05)
                cleaned = True
        assert cleaned and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with _interrupt_once():
            pass
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("command", ["sample", "predict", "eval"])
def test_a_damaged_store_is_a_message_and_exit_2_in_every_command(command, tmp_path, capsys):
    """A store with a damaged page used to end sample, predict and eval with exit 1 and a
    sqlite3.DatabaseError traceback. No server is needed: the store opens first."""
    from test_store import damaged_store

    store, _ = damaged_store(tmp_path / "damaged.sqlite")
    before = store.read_bytes()
    url = "http://127.0.0.1:9/v1"  # never reached
    args = {
        "sample": sample_args(url, tmp_path),
        "predict": [*sample_args(url, tmp_path), "--metric", "exact_match"],
        "eval": ["eval", "--backend", "openai", "--model_args", f"base_url={url}", "--tasks",
                 "arith", "--limit", "2", "-n", "2", "--output_path", str(tmp_path / "out"), "-q"],
    }[command]  # fmt: skip
    if command == "predict":
        args[0] = "predict"
    args = [*args, "--store", str(store)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"metricwise {command}: error: The sample store {str(store)!r} is damaged" in err
    assert "nothing was written to it" in err and "metricwise recover" in err
    assert "Traceback" not in err and store.read_bytes() == before


def test_metricwise_recover_writes_the_intact_rows_to_a_new_store(tmp_path, capsys):
    from test_store import damaged_store

    store, _ = damaged_store(tmp_path / "damaged.sqlite")
    assert main(["recover", str(store), str(tmp_path / "new.sqlite")]) == 0
    err = capsys.readouterr().err
    copied = int(re.search(r"copied (\d+) samples of 200 sample sets", err).group(1))
    assert 1500 < copied < 1600 and f"wrote {tmp_path / 'new.sqlite'}" in err
    assert main(["recover", str(store), str(tmp_path / "new.sqlite")]) == 2
    assert "exists already" in capsys.readouterr().err


def test_an_error_ends_the_process_at_once_while_other_requests_hang(tmp_path):
    """A refused request fails the run; the process used to live on until the other requests'
    retries finished (158 s)."""

    def refuse_one(handler, path, body):
        if body["prompt"].endswith("#0"):
            return 401, {"error": {"message": "invalid api key"}}, None
        time.sleep(8.0)
        return None

    server = FakeServer(behaviour=refuse_one, lifetime=60.0)
    try:
        process = _spawn(_many_prompts_args(server.url, tmp_path), tmp_path)
        started = time.monotonic()
        _, err = process.communicate(timeout=30)
        assert time.monotonic() - started < 5.0, err
        assert process.returncode == 3 and "invalid api key" in err
    finally:
        server.close()
