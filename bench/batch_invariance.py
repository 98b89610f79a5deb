"""How far an hf sample depends on what shares its batch.

Sample ``i`` of a prompt has its own random stream, so batching never changes its random
numbers; it can change the floating-point rounding of the forward pass (left padding, the batch's
shape), and a token whose uniform number falls within that rounding of a boundary of the sampling
distribution flips. This measures both effects on the same model in one run:

* the largest absolute difference of a prompt's next-token logits computed alone and inside a
  left-padded batch of prompts of different lengths;
* how many of P x n samples differ (as token sequences) between the P prompts sampled in one
  batch and each prompt sampled alone, and the first step at which each differing sample forks.

The README quotes its numbers. Usage::

    python bench/batch_invariance.py                    # gemma-3-270m, 4 prompts x n=16 x 32 tokens
    python bench/batch_invariance.py --model smollm2-135m-instruct --n 8
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (pinned: this box is shared)"
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from metricwise import SamplingConfig
    from metricwise.backends.hf import HFBackend

    passage = (
        "The following passage is about the history of Kyoto, which was the capital of Japan for more "
        "than a thousand years. "
    ) * 3
    prompts = [
        "Q: What is the capital of Japan?\nA:",
        passage + "\nQ: Which city is described?\nA:",
        "Q: 17 + 25 =\nA:",
        "Rate the similarity from 0 to 5 of 'a man plays a guitar' and 'a person plays an instrument'. Score:",
    ]
    backend = HFBackend(args.model, reuse_prefill=False)
    config = SamplingConfig(n=args.n, max_tokens=args.max_tokens, seed=args.seed)
    started = time.perf_counter()
    alone_logits = backend._prefill([prompts[0]], args.max_tokens)[0]
    batch_logits = backend._prefill(prompts, args.max_tokens)[0][:1]
    drift = float((alone_logits - batch_logits).abs().max())
    together = backend.sample(prompts, config)
    alone = [backend.sample([p], config)[0] for p in prompts]
    differing, forks = 0, []
    for batched_set, alone_set in zip(together, alone, strict=True):
        for a, b in zip(batched_set.candidates, alone_set.candidates, strict=True):
            if a.token_ids != b.token_ids:
                differing += 1
                ta, tb = a.token_ids or (), b.token_ids or ()
                forks.append(
                    next(
                        (k for k, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y),
                        min(len(ta), len(tb)),
                    )
                )
    total = len(prompts) * args.n
    print(
        f"model {backend.signature}, {len(prompts)} prompts x n={args.n} x {args.max_tokens} tokens, seed {args.seed}"
    )
    print(f"max |logit difference|, prompt 0 alone vs in the padded batch: {drift:.3g}")
    print(
        f"samples that differ, batch of {len(prompts)} vs each prompt alone: {differing} of {total} ({differing / total:.0%})"
    )
    if forks:
        print(f"first differing token of each: {sorted(forks)}")
    print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
