"""Sampling conventions every backend follows, in one place.

- **Order.** The sampler applies temperature, then top-k, then top-p, then min-p
  (:data:`SAMPLER_ORDER`, transformers' warper order). The hf and llamacpp backends apply it to
  the logits; the openai backend tells ``llama-server`` to use it and rebuilds q in it.
- **Ancestral sampling.** Temperature 1 with no truncation (:func:`is_ancestral`) samples the
  model itself: q is p, and one pass over the vocabulary serves both.
- **Top-p.** A token is kept when the mass of the tokens ranked before it is below ``top_p``
  (the most probable token is always kept); the nucleus is searched among the
  :data:`TOP_P_PARTIAL` most probable tokens first. The hf backend ranks ties by token id and
  sums masses exactly in fixed point (:mod:`metricwise.backends.truncation`, which finds a wider
  nucleus by a radix select, with no host read on an accelerator); the llamacpp backend's numpy
  kernel keeps every token tied at the cut and sorts rows whose nucleus is wider.
- **Inverse CDF.** Sample ``i`` draws one uniform number per step from its own stream and takes
  the first token id whose cumulative weight reaches it; the cumulative sums are taken in blocks
  of :data:`CDF_BLOCK` ids (float32 within a block, float64 across blocks), so that the hf and
  llamacpp kernels round alike.
"""

from __future__ import annotations

from metricwise.types import SamplingConfig

#: The order the sampler applies its transforms (transformers' ``TemperatureLogitsWarper``,
#: ``TopKLogitsWarper``, ``TopPLogitsWarper``, ``MinPLogitsWarper``).
SAMPLER_ORDER: tuple[str, ...] = ("temperature", "top_k", "top_p", "min_p")
#: Most probable tokens searched for the top-p nucleus before falling back to a full sort.
TOP_P_PARTIAL = 1024
#: Vocabulary ids per block of the two-level inverse-CDF search.
CDF_BLOCK = 1024


def is_ancestral(config: SamplingConfig) -> bool:
    """True when ``config`` samples the model itself: temperature 1 and no truncation (q = p)."""
    return (
        config.temperature == 1.0
        and config.top_k == 0
        and config.top_p >= 1.0
        and config.min_p <= 0.0
    )
