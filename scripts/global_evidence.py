"""How an IMH chain moves on a real model: acceptance rates, and sequence log-probability under
global against local sampling, for several truncations (docs/results/gemma-3-270m-global).

For each truncation setting, ``--proposals`` local samples per prompt are drawn through the
sample store (a second run samples nothing), a chain with ``--burn_in`` runs over them, and the
script prints one markdown row per setting:

* the acceptance rate (mean over prompts, and its range), distinct chain states;
* the share of proposals cut off by ``max_tokens`` (never accepted);
* ``log p`` (raw model, nats) of the local samples and of the chain's states: mean and
  10/50/90th percentiles over all samples of all prompts. Global decoding moves mass towards
  sequences whose truncation sets held more of the model's probability along the way;
* Kish's effective sample size of the importance weights ``exp(logp - logq)`` over the complete
  proposals, per prompt (mean): what ``weights="importance"`` would keep of the same pool.

Usage::

    python scripts/global_evidence.py --task triviaqa --limit 20 --proposals 64 \\
        --data_dir ../shared/data --store out/global.sqlite
"""

from __future__ import annotations

import argparse
import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402

from metricwise.backends import load_backend  # noqa: E402
from metricwise.evaluate.runner import prepare_task  # noqa: E402
from metricwise.global_decoding import ChainSettings, global_chains  # noqa: E402
from metricwise.progress import Progress  # noqa: E402
from metricwise.store import SampleStore  # noqa: E402
from metricwise.tasks import get_task  # noqa: E402
from metricwise.tasks.base import resolve_data_dir  # noqa: E402
from metricwise.types import COMPLETE_FINISH_REASONS, SamplingConfig  # noqa: E402


def parse_setting(text: str) -> dict[str, float | int]:
    """``top_k=10`` or ``top_p=0.9,temperature=0.7`` -> SamplingConfig fields."""
    out: dict[str, float | int] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        out[key.strip()] = int(value) if key.strip() == "top_k" else float(value)
    return out


def kish(log_weights: np.ndarray) -> float:
    w = np.exp(log_weights - log_weights.max())
    return float(w.sum() ** 2 / (w**2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--task", default="triviaqa")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--num_fewshot", type=int, default=5)
    parser.add_argument("--proposals", type=int, default=64)
    parser.add_argument("--burn_in", type=int, default=16)
    parser.add_argument(
        "--settings",
        default="top_k=10;top_k=40;top_p=0.9;top_p=0.95",
        help="truncation settings separated by ';'",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--store", default="out/global.sqlite")
    parser.add_argument("--batch_size", type=int, default=4)
    args = parser.parse_args()

    task = get_task(args.task)
    _, prompts, _ = prepare_task(
        task,
        resolve_data_dir(args.data_dir),
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        seed=args.seed,
    )
    backend = load_backend("hf", args.model)
    settings = ChainSettings(burn_in=args.burn_in)
    states = args.proposals - args.burn_in
    rows = []
    with SampleStore(args.store) as store:
        for text in args.settings.split(";"):
            config = SamplingConfig(
                n=args.proposals,
                max_tokens=task.max_tokens,
                stop=task.stop,
                seed=args.seed,
                **parse_setting(text),  # type: ignore[arg-type]
            )
            with Progress(
                len(prompts), f"{text}: {args.proposals} proposals", unit="prompt"
            ) as bar:
                pools = store.sample(
                    backend,
                    prompts,
                    config,
                    batch_size=args.batch_size,
                    progress=lambda d, t: bar.update(d),
                )
            chains = global_chains(
                pools, states, temperature=config.temperature, settings=settings, seed=args.seed
            )
            local = np.array([c.logp for p in pools for c in p.candidates])
            chained = np.array([c.logp for ch in chains for c in ch.states.candidates])
            cut = np.mean(
                [
                    c.finish_reason not in COMPLETE_FINISH_REASONS
                    for p in pools
                    for c in p.candidates
                ]
            )
            ess = [
                kish(
                    np.array(
                        [
                            c.logp - c.logq
                            for c in p.candidates
                            if c.finish_reason in COMPLETE_FINISH_REASONS
                        ]
                    )
                )
                for p in pools
                if any(c.finish_reason in COMPLETE_FINISH_REASONS for c in p.candidates)
            ]
            rates = np.array([ch.acceptance_rate for ch in chains])
            rows.append(
                f"| {text} | {rates.mean():.2f} ({rates.min():.2f}-{rates.max():.2f}) | "
                f"{np.mean([ch.distinct_states for ch in chains]):.1f} / {states} | {cut:.0%} | "
                + " | ".join(
                    f"{v.mean():.2f} ({np.percentile(v, 10):.2f}, {np.median(v):.2f}, {np.percentile(v, 90):.2f})"
                    for v in (local, chained)
                )
                + f" | {np.mean(ess):.1f} / {args.proposals} |"
            )
    backend.close()
    print(
        f"{args.task}, {len(prompts)} prompts x {args.proposals} proposals, burn-in {args.burn_in}, "
        f"{states} chain states per prompt, model {backend.signature}\n"
    )
    print(
        "| setting | acceptance rate (range) | distinct states | cut off | log p local: mean (p10, p50, p90) "
        "| log p global: mean (p10, p50, p90) | importance ESS |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
