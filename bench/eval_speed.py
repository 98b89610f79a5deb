"""Evaluation speed: greedy + N samples of one prompt batch from one prefill, against two.

``metricwise eval`` needs, per item, a greedy answer and N samples of the same prompt. The hf
backend keeps the last prompt batch's prefill so that the samples reuse the greedy call's pass
over the prompts (``reuse_prefill=True``, the default); the baseline prefills the batch for each
call (``reuse_prefill=False``). Both run the same ``run_eval`` on the default model, each in its
own process with a fresh sample store, side by side in one invocation; the outputs are checked
to be the same samples.

Few-shot prompts are long and answers short, so the prompt pass is a large part of the cost:
STS-B with 5 shots by default (needs the data directory: ``--data_dir`` or
``METRICWISE_DATA_DIR``), or the built-in ``arith`` task without one.

Usage::

    python bench/eval_speed.py --data_dir ../shared/data      # stsb, 16 items x n=16, 5 shots
    python bench/eval_speed.py --task arith --limit 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    import torch

    from metricwise.backends.hf import HFBackend
    from metricwise.evaluate.runner import EvalConfig, run_eval

    torch.set_num_threads(args.threads)
    backend = HFBackend("gemma-3-270m", reuse_prefill=args.phase == "reuse")
    backend.greedy(["Warm-up:"], _config(2))
    with tempfile.TemporaryDirectory() as tmp:
        config = EvalConfig(
            model="gemma-3-270m",
            tasks=[args.task],
            limit=args.limit,
            n=args.n,
            num_fewshot=args.num_fewshot,
            data_dir=args.data_dir,
            store=str(Path(tmp) / "samples.sqlite"),
            output_path=None,
            curve_subsets=0,
            bootstrap_iters=10,
            quiet=True,
            plots=False,
        )
        start = time.perf_counter()
        results = run_eval(config, backend=backend)
        seconds = time.perf_counter() - start
    value = next(r["value"] for r in results["runs"][0]["scores"] if r["decoder"] == "first")
    print(
        "RESULT "
        + json.dumps(
            {
                "seconds": seconds,
                "prefills": backend.prefill_calls - 1,
                "first_sample_score": value,
                "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            }
        )
    )


def _config(max_tokens: int):  # type: ignore[no-untyped-def]
    from metricwise import SamplingConfig

    return SamplingConfig(n=1, max_tokens=max_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--task", default=None, help="default: stsb with a data directory, else arith"
    )
    parser.add_argument("--data_dir", default=os.environ.get("METRICWISE_DATA_DIR"))
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--num_fewshot", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--phase", choices=("reuse", "separate"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.task = args.task or ("stsb" if args.data_dir else "arith")
    if args.phase:
        worker(args)
        return
    print(
        f"# eval speed: gemma-3-270m on {args.task}, {args.limit} items x n={args.n}, {args.num_fewshot} shots, "
        f"{args.threads} threads\n"
    )
    results = {}
    for phase in ("reuse", "separate"):
        cmd = [
            sys.executable,
            __file__,
            "--phase",
            phase,
            "--task",
            args.task,
            "--limit",
            str(args.limit),
            "-n",
            str(args.n),
            "--num_fewshot",
            str(args.num_fewshot),
            "--threads",
            str(args.threads),
        ]
        if args.data_dir:
            cmd += ["--data_dir", args.data_dir]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"{phase} failed:\n{proc.stderr[-3000:]}")
        results[phase] = json.loads(line[len("RESULT ") :])
    print("| phase | prefills | seconds | peak memory (MiB) | first-sample score |")
    print("|---|---:|---:|---:|---:|")
    for phase, r in results.items():
        print(
            f"| {phase} | {r['prefills']} | {r['seconds']:.1f} | {r['peak_mib']:.0f} | {r['first_sample_score']:.4f} |"
        )
    if results["reuse"]["first_sample_score"] != results["separate"]["first_sample_score"]:
        raise SystemExit("the two runs scored different samples")
    print(
        f"\n- separate / reuse time: {results['separate']['seconds'] / results['reuse']['seconds']:.2f}x"
    )


if __name__ == "__main__":
    main()
