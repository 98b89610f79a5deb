"""A backend: a toy "model" that answers with a fair die, with its log-probabilities
(CONTRIBUTING.md, "Add a backend")."""

import math

import numpy as np

from metricwise.backends.base import register_backend, sample_seed, sample_sets
from metricwise.types import Candidate

LOG_SIXTH = math.log(1 / 6)


@register_backend("dice")  # --backend dice
class DiceBackend:
    def __init__(self, model=None, *, guards=None):
        self.signature = f"dice:{model or 'd6'}"  # keys the sample store: name the model

    def sample(self, prompts, config, *, start=0):
        # sample_sets handles temperature 0 (greedy) and checks every candidate: a failure must
        # raise BackendError (or SamplingTimeout), never come back as a sample.
        def draw(batch, m):
            return [
                [self._roll(sample_seed(config.seed, start + j, p)) for j in range(m)]
                for p in batch
            ]

        return sample_sets(prompts, config, start, self.greedy, draw)

    def greedy(self, prompts, config):
        return [
            Candidate("1", logp=LOG_SIXTH, logq=0.0, n_tokens=1, finish_reason="eos")
            for _ in prompts
        ]

    def _roll(self, seed):  # sample i of a prompt draws from its own stream
        face = int(np.random.default_rng(list(seed)).integers(1, 7))
        return Candidate(str(face), logp=LOG_SIXTH, logq=LOG_SIXTH, n_tokens=1, finish_reason="eos")

    def close(self):
        pass
