"""The hf backend on a CUDA device (issue 13), and the GPU bench kept working on CPU.

The ``gpu`` tests skip without CUDA, so CI (no GPU) passes; ``scripts/gpu_check.sh`` runs them
on a lent GPU machine. Tolerances: float32 on the device agrees with float32 teacher forcing to
about 1e-5 per token (kernels differ in summation order); bfloat16 logits are rounded to 8 bits
of mantissa, so a sequence's log-probability moves by up to about 0.05 nats per token.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from metricwise.types import SamplingConfig

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["the cat sat on", "what is two plus three ?"]
FP32_TOKEN_TOL = 1e-4


def _cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch


def _teacher_forced(model, tokenizer, prompt, token_ids, config):
    """(logp, logq) of ``token_ids`` after ``prompt`` from one full forward pass, float64 sums."""
    import torch

    from metricwise.backends.hf import process_logits

    ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids + list(token_ids)], device=model.device)).logits[0]
    rows = logits[len(ids) - 1 : len(ids) - 1 + len(token_ids)].float()
    index = torch.tensor(token_ids, device=rows.device)[:, None]
    logp = float(torch.log_softmax(rows, -1).gather(1, index).double().sum())
    logq = float(
        torch.log_softmax(process_logits(rows, config), -1).gather(1, index).double().sum()
    )
    return logp, logq


@pytest.mark.gpu
@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(n=4, max_tokens=12, seed=3),
        SamplingConfig(n=4, max_tokens=12, seed=5, temperature=0.7, top_k=20, top_p=0.9),
    ],
    ids=["ancestral", "truncated"],
)
@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
def test_cuda_logp_and_logq_equal_teacher_forcing(config, kv_cache):
    """A static cache on CUDA is compiled by default (CUDA graphs); a dynamic one is not."""
    _cuda()
    from metricwise.backends.hf import HFBackend
    from tiny_lm import tiny_model_and_tokenizer

    model, tokenizer = tiny_model_and_tokenizer()
    model = model.to("cuda")
    backend = HFBackend(model, tokenizer=tokenizer, device="cuda", kv_cache=kv_cache)
    assert backend.compile == (kv_cache == "static")
    for prompt, sample_set in zip(PROMPTS, backend.sample(PROMPTS, config), strict=True):
        for c in sample_set.candidates:
            logp, logq = _teacher_forced(model, tokenizer, prompt, c.token_ids, config)
            assert c.logp == pytest.approx(logp, abs=FP32_TOKEN_TOL * c.n_tokens)
            assert c.logq == pytest.approx(logq, abs=FP32_TOKEN_TOL * c.n_tokens)


@pytest.mark.gpu
def test_a_seeded_run_repeats_on_the_device():
    _cuda()
    from metricwise.backends.hf import HFBackend
    from tiny_lm import tiny_model_and_tokenizer

    model, tokenizer = tiny_model_and_tokenizer()
    model = model.to("cuda")
    config = SamplingConfig(n=8, max_tokens=12, seed=7, top_p=0.9)
    first = HFBackend(model, tokenizer=tokenizer, device="cuda").sample(PROMPTS, config)
    again = HFBackend(model, tokenizer=tokenizer, device="cuda").sample(PROMPTS, config)
    assert [c.token_ids for s in first for c in s.candidates] == [
        c.token_ids for s in again for c in s.candidates
    ]


@pytest.mark.gpu
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.999])
def test_the_radix_top_p_on_the_device_keeps_the_cpus_set(top_p):
    """The sync-free kernel (scatter-add histograms on the device) against the CPU's partial
    sort, on flat and peaked rows of a 262,144-token vocabulary; ties included (bf16 logits)."""
    torch = _cuda()
    from metricwise.backends.truncation import top_p_keep

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 262_144, generator=gen) * torch.linspace(0.5, 8, 16)[:, None]
    logits = logits.bfloat16().float()  # many equal values, as a bf16 model's logits have
    on_device = top_p_keep(logits.cuda(), top_p, sync_free=True).cpu()
    assert torch.equal(on_device, top_p_keep(logits, top_p))


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("kv_cache", "compile"),
    [
        pytest.param(
            "dynamic",
            False,
            marks=pytest.mark.xfail(
                strict=True,
                reason="with a dynamic cache transformers' mask code reads the padding mask "
                "(masking_utils.fast_all) every step; the static cache skips that read (on CPU: "
                "tests/test_backend_hf.py::test_with_a_static_cache_nothing_in_a_step_reads_the_device)",
            ),
        ),
        ("static", False),
        ("static", True),
    ],
    ids=["dynamic", "static", "static-compiled"],
)
def test_the_decode_loop_never_waits_for_the_device(monkeypatch, kv_cache, compile):
    """From the token selector's first call to the read-back (sync_every is larger than
    max_tokens, so that is the loop's last step), nothing may wait for the device: sampling,
    the log-probability sums and the model's forward passes."""
    torch = _cuda()
    import metricwise.backends.hf as hf
    from metricwise.backends.hf import HFBackend
    from tiny_lm import tiny_model_and_tokenizer

    model, tokenizer = tiny_model_and_tokenizer()
    backend = HFBackend(
        model.to("cuda"),
        tokenizer=tokenizer,
        device="cuda",
        sync_every=64,
        kv_cache=kv_cache,
        compile=compile,
    )
    config = SamplingConfig(n=4, max_tokens=8, seed=1)
    # Warm-up outside the check, on a batch of the checked one's shape (one prompt, the same
    # static capacity): compiling and recording CUDA graphs wait for the device; replaying does not.
    backend.sample(["a warm-up batch"], config)

    class CheckedSelector(hf.TokenSelector):
        def __call__(self, *args, **kwargs):
            torch.cuda.set_sync_debug_mode("error")  # from here to the next read-back
            return super().__call__(*args, **kwargs)

    replay = hf._replay

    def read_back(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("default")
        return replay(*args, **kwargs)

    monkeypatch.setattr(hf, "TokenSelector", CheckedSelector)
    monkeypatch.setattr(hf, "_replay", read_back)
    try:
        backend.sample(["a batch not prefilled yet"], config)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.slow
def test_the_gpu_bench_runs_on_cpu():
    """CI keeps bench/gpu_sampling.py working: its CPU quick mode (a 2-layer model)."""
    pytest.importorskip("torch")
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu_sampling.py"),
            "--device",
            "cpu",
            "--quick",
            "--phases",
            "metricwise,generate",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    assert "| 4 x 4 | 1 | metricwise | 512 |" in out
    assert "| 4 x 4 | 1 | generate | 512 |" in out and "x |" in out
