"""Load and fault run of ``metricwise serve`` in front of a fake upstream, on 127.0.0.1 only.

What it does (bounded: a few hundred requests, every process stopped at the end):

1. Starts the fake OpenAI-compatible upstream (``tests/fake_openai_server.py``; every answer
   waits ``--delay`` seconds, standing in for the generation) in its own process, and
   ``metricwise serve --backend openai`` in front of it in another.
2. Proxied run: ``--requests`` completions requests from ``--clients`` concurrent clients, each
   with a unique prompt, ``metric=exact_match``, ``samples=N`` and ``return_samples``. Checks
   that every request got exactly one 200 answer whose N samples are the ones the fake upstream
   draws for that very prompt (its samples are a function of the request's seed, which the
   server derives from the prompt), and that the server's own counters grew by exactly
   ``requests`` answers and ``requests x N`` samples: none lost, none mixed up, none duplicated.
3. Direct run: the same sampling requests (the body the openai backend sends for each prompt)
   sent straight to the upstream by the same clients.
4. Prints p50/p95/p99 latency and throughput of both, and the server's overhead: the extra mean
   end-to-end time of a proxied request over a direct one, as a share of the proxied time
   (target: under 5%).
5. Fault run, against a second server with a short upstream ``--timeout`` in front of an
   in-process fake whose fault mode is switched: 500s, dropped connections, a hang. Every
   affected request must get a clear 502 or 504 naming the upstream, within the timeout, and
   the requests after each fault must be served again.

Both runs of the load use the same client code (one keep-alive ``http.client`` connection per
client), so the difference is the server's own work: parsing, queueing, one more HTTP hop,
reading the upstream's log-probabilities, and the decision.

Run: ``python bench/serve_load.py`` (defaults: 200 requests, 16 clients, N = 8, delay 0.25 s).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai_server import FakeServer, free_port  # noqa: E402


class Client:
    """One keep-alive HTTP/1.1 connection, JSON in and out."""

    def __init__(self, base: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(base)
        self.host, self.port, self.timeout = parts.hostname or "127.0.0.1", parts.port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        for attempt in range(2):  # a keep-alive connection the server closed: reconnect once
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(
                    "POST", path, body=data, headers={"Content-Type": "application/json"}
                )
                response = self.conn.getresponse()
                raw = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return response.status, json.loads(raw) if raw else None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run_load(
    base: str, path: str, bodies: list[dict[str, Any]], clients: int, timeout: float
) -> tuple[list[float], list[tuple[int, Any]], float]:
    """Send ``bodies`` from ``clients`` threads; (latencies, (status, answer) per body, wall s)."""
    latencies: list[float] = [0.0] * len(bodies)
    answers: list[tuple[int, Any]] = [(0, None)] * len(bodies)
    todo = collections.deque(range(len(bodies)))
    lock = threading.Lock()

    def worker() -> None:
        client = Client(base, timeout)
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.popleft()
                started = time.perf_counter()
                try:
                    answers[i] = client.post(path, bodies[i])
                except OSError as exc:
                    answers[i] = (-1, str(exc))
                latencies[i] = time.perf_counter() - started
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, answers, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def describe(name: str, latencies: list[float], wall: float) -> str:
    ms = [x * 1000 for x in latencies]
    return (
        f"{name:<8} p50 {percentile(ms, 0.5):7.1f} ms  p95 {percentile(ms, 0.95):7.1f} ms  "
        f"p99 {percentile(ms, 0.99):7.1f} ms  mean {statistics.fmean(ms):7.1f} ms  "
        f"throughput {len(ms) / wall:6.1f} req/s"
    )


@contextlib.contextmanager
def serve(
    upstream: str, port: int, clients: int, timeout: float
) -> Iterator[subprocess.Popen[str]]:
    cmd = [
        sys.executable, "-m", "metricwise.cli", "serve", "--backend", "openai",
        "--model_args", f"base_url={upstream},server=generic,concurrency={clients}",
        "--port", str(port), "--max_concurrent", str(clients), "--max_queue", "256",
        "--timeout", str(timeout), "--max_retries", "0", "--no_access_log", "--log_level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(
                    f"metricwise serve exited: {proc.stderr.read() if proc.stderr else ''}"
                )
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            if time.monotonic() > deadline:
                raise SystemExit("metricwise serve did not become ready within 60 s")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_fake(delay: float) -> tuple[subprocess.Popen[str], str]:
    """The fake upstream in its own process (so it does not share this process's GIL)."""
    cmd = [sys.executable, str(ROOT / "tests" / "fake_openai_server.py"), "--port", "0",
           "--delay", str(delay), "--lifetime", "600"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip() if proc.stdout else ""
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise SystemExit(f"the fake upstream did not start: {url!r}")
    return proc, url


def upstream_body(prompt: str, samples: int, max_tokens: int) -> dict[str, Any]:
    """The body the openai backend sends upstream for ``prompt`` (what the direct run replays)."""
    from metricwise import SamplingConfig
    from metricwise.backends.openai import OpenAIBackend, _Job

    backend = OpenAIBackend("http://127.0.0.1:1", "fake-model", server="generic")
    config = SamplingConfig(n=samples, max_tokens=max_tokens)
    return backend._payload(backend.servers[0], prompt, _Job(0, 0, samples), config, greedy=False)


def expected_texts(prompt: str, samples: int, max_tokens: int) -> list[str]:
    """The texts the fake upstream draws for ``prompt``: a function of the request's seed."""
    from fake_openai_server import fake_choice

    body = upstream_body(prompt, samples, max_tokens)
    return [fake_choice(body["seed"] + j, body, j)["text"] for j in range(samples)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counters(base: str) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", urllib.parse.urlsplit(base).port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def fault_run(clients: int, timeout: float, log: Callable[[str], None]) -> bool:
    fake = FakeServer(hang_seconds=timeout + 2, lifetime=300.0)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ok = True
    try:
        with serve(fake.url, port, clients, timeout):
            for mode, expected in (("error500", 502), ("drop", 502), ("hang", 504)):
                fake.mode = mode
                bodies = [
                    {"model": "fake-model", "prompt": f"fault {mode} {i}", "max_tokens": 8,
                     "metric": "exact_match", "samples": 4}
                    for i in range(clients)
                ]  # fmt: skip
                latencies, answers, _ = run_load(base, "/v1/completions", bodies, clients, 60.0)
                statuses = collections.Counter(status for status, _ in answers)
                clear = all(
                    status == expected
                    and isinstance(body, dict)
                    and set(body) == {"error"}
                    and fake.url in body["error"]["message"]
                    for status, body in answers
                )
                fake.mode = "healthy"
                # The fake's samples may run to max_tokens: without include_incomplete such a
                # prompt has no decision, which is a 422 (not the server failing to recover).
                after = [
                    {"model": "fake-model", "prompt": f"after {mode} {i}", "max_tokens": 8,
                     "metric": "exact_match", "samples": 4, "include_incomplete": True}
                    for i in range(clients)
                ]  # fmt: skip
                _, answers_after, _ = run_load(base, "/v1/completions", after, clients, 60.0)
                served = sum(status == 200 for status, _ in answers_after)
                passed = clear and served == clients and max(latencies) < timeout + 2
                ok = ok and passed
                log(
                    f"  {mode:<9} -> {dict(statuses)} (expected {expected}; slowest {max(latencies):.2f} s); "
                    f"the next {clients} requests: {served} served  {'ok' if passed else 'FAILED'}"
                )
                example = answers[0][1]
                if mode == "hang" and isinstance(example, dict):
                    log(f"  e.g. {json.dumps(example)[:240]}")
    finally:
        fake.close()
    return ok


def load_round(
    base: str, upstream: str, server_pid: int, args: argparse.Namespace, tag: str
) -> tuple[bool, float, list[str]]:
    """One proxied run of ``args.requests`` requests and the same requests sent directly.

    Returns (everything arrived once and intact, overhead share, lines to print).
    """

    def body(i: int) -> dict[str, Any]:
        return {
            "model": "fake-model",
            "prompt": f"{tag} request {i}",
            "max_tokens": args.max_tokens,
            "metric": "exact_match",
            "samples": args.samples,
            "include_incomplete": True,
            "return_samples": True,
        }

    bodies = [body(i) for i in range(args.requests)]
    before, cpu = counters(base), cpu_seconds(server_pid)
    proxied, answers, proxied_wall = run_load(base, "/v1/completions", bodies, args.clients, 60.0)
    cpu, after = cpu_seconds(server_pid) - cpu, counters(base)
    # None lost, mixed up or duplicated.
    statuses = collections.Counter(status for status, _ in answers)
    good = sum(
        status == 200
        and isinstance(answer, dict)
        and [s["text"] for s in answer["metricwise"]["samples"]]
        == expected_texts(b["prompt"], args.samples, args.max_tokens)
        for b, (status, answer) in zip(bodies, answers, strict=True)
    )
    key = 'metricwise_requests_total{endpoint="completions",status="200"}'
    answered = after.get(key, 0) - before.get(key, 0)
    drawn = after["metricwise_samples_total"] - before["metricwise_samples_total"]
    complete = (
        good == args.requests
        and answered == args.requests
        and drawn == args.requests * args.samples
    )
    # The same sampling requests, straight to the upstream, from the same clients.
    direct_bodies = [upstream_body(b["prompt"], args.samples, args.max_tokens) for b in bodies]
    direct, direct_answers, direct_wall = run_load(
        upstream, "/v1/completions", direct_bodies, args.clients, 60.0
    )
    direct_ok = sum(status == 200 for status, _ in direct_answers)
    overhead = statistics.fmean(proxied) - statistics.fmean(direct)
    share = overhead / statistics.fmean(proxied)
    p50 = percentile(proxied, 0.5) - percentile(direct, 0.5)
    lines = [
        f"{tag}: {good}/{args.requests} answers are 200 with the N samples of their own prompt "
        f"(statuses {dict(statuses)}); the server counted {answered:.0f} answers and {drawn:.0f} "
        f"samples (expected {args.requests} and {args.requests * args.samples})",
        "  " + describe("direct", direct, direct_wall) + f"  ({direct_ok} ok)",
        "  " + describe("proxied", proxied, proxied_wall) + f"  ({good} ok)",
        f"  server overhead {overhead * 1000:.1f} ms per request on the mean ({share:.1%} of "
        f"end-to-end time; p50 {p50 * 1000:+.1f} ms); server CPU {cpu / args.requests * 1000:.1f} ms "
        f"per request; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
    ]
    return complete and direct_ok == args.requests, share, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("-n", "--samples", type=int, default=8, help="samples per request (N)")
    parser.add_argument("--max_tokens", type=int, default=16)
    parser.add_argument(
        "--delay", type=float, default=0.25, help="seconds the fake upstream takes per request"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="proxied and direct runs alternate this many times; the median overhead is the result",
    )
    parser.add_argument(
        "--fault_timeout",
        type=float,
        default=2.0,
        help="the fault run's server --timeout (seconds per upstream request)",
    )
    parser.add_argument("--no_faults", action="store_true", help="skip the fault run")
    args = parser.parse_args()
    if not (
        0 < args.requests <= 2000
        and 0 < args.clients <= 64
        and 0 < args.samples <= 64
        and 0 < args.rounds <= 10
    ):
        parser.error(
            "keep the run bounded: requests <= 2000, clients <= 64, samples <= 64, rounds <= 10"
        )

    print(
        f"metricwise serve in front of a fake upstream (delay {args.delay} s per request) on 127.0.0.1: "
        f"{args.rounds} rounds of {args.requests} requests, {args.clients} concurrent clients, "
        f"N = {args.samples}, max_tokens {args.max_tokens}"
    )
    fake, upstream = start_fake(args.delay)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        with serve(upstream, port, args.clients, 60.0) as server:
            warm = [
                {"model": "fake-model", "prompt": f"warm-up {i}", "max_tokens": args.max_tokens,
                 "metric": "exact_match", "samples": args.samples}
                for i in range(args.clients)
            ]  # fmt: skip
            run_load(base, "/v1/completions", warm, args.clients, 60.0)
            intact, shares = True, []
            for r in range(args.rounds):
                ok, share, lines = load_round(base, upstream, server.pid, args, f"round {r + 1}")
                intact, shares = intact and ok, [*shares, share]
                print("\n".join(lines))
            median = statistics.median(shares)
            print(
                f"median server overhead over {args.rounds} rounds: {median:.1%} of end-to-end time "
                f"(rounds: {', '.join(f'{x:.1%}' for x in shares)}); target < 5%: "
                f"{'met' if median < 0.05 else 'NOT met'}; none lost or duplicated: "
                f"{'yes' if intact else 'NO'}"
            )
        faults_ok = True
        if not args.no_faults:
            print(
                f"fault run (a second server, --timeout {args.fault_timeout} s, --max_retries 0):"
            )
            faults_ok = fault_run(args.clients, args.fault_timeout, print)
        return 0 if intact and faults_ok else 1
    finally:
        fake.terminate()
        fake.wait(10)


if __name__ == "__main__":
    sys.exit(main())
