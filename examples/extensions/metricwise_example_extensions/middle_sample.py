"""A decoder: one registered class (CONTRIBUTING.md, "Add a decoder")."""

from typing import Any

from metricwise.evaluate.decoders import Decoder, DecoderInput, register_decoder


@register_decoder("middle_sample")
class MiddleSample(Decoder):
    """The middle answer of the sorted samples."""

    uses_samples = True  # what it reads: uses_greedy, uses_references, uses_logprobs, uses_prior

    def predict(self, x: DecoderInput) -> Any:
        answers = sorted(a for a in map(x.answer, x.pool.candidates) if a is not None)
        return answers[len(answers) // 2] if answers else None
