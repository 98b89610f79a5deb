"""Confidence-based pruning (Cheng and Vlachos, "Faster Minimum Bayes Risk Decoding with
Confidence-based Pruning", EMNLP 2023): any metric; hypotheses that lose every bootstrap
resample to the leader are dropped as the pseudo-references grow."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metricwise.mbr.base import MBRMethod
from metricwise.mbr.ranking import PairScorer, best_index, cell_budget


@dataclass(frozen=True)
class Prune(MBRMethod):
    """Settings of confidence-based pruning.

    Attributes
    ----------
    first_round:
        Sampled pseudo-references every hypothesis is compared with in the first round; each
        round multiplies them by ``growth`` until all are used.
    growth:
        The factor between two rounds' references.
    bootstrap:
        Bootstrap resamples per round (as in the paper).
    min_wins:
        A hypothesis is dropped when it ties or beats the leader in fewer than this many of the
        resamples: an estimated probability of being at least as good below 1/500. The
        paper's alpha = 0.99 (fewer than 5 of 500) with 16 first references dropped the exact
        answer in 1-2 of 10 windows of 1024 unrelated sentences (BLEU, chrF;
        bench/mbr_speed.py); 1 and 32 first references kept it in all 108 sets tried, at about
        the same speed.
    seed:
        Seed of the order in which samples enter the rounds and of the bootstrap, so that a
        decision is reproducible (and, like the others, independent of the samples' order).
    """

    name = "prune"
    first_round: int = 32
    growth: int = 2
    bootstrap: int = 500
    min_wins: int = 1
    seed: int = 0

    def search(
        self, scorer: PairScorer, evidence: np.ndarray, weights: np.ndarray, counts: np.ndarray
    ) -> tuple[int, int, int]:
        """Confidence-based pruning (Cheng and Vlachos, EMNLP 2023). Returns (best, rounds, left).

        The N samples (distinct reference j stands for ``counts[j]`` samples of weight
        ``weights[j] / counts[j]``) enter in a seeded pseudo-random order: ``self.first_round``,
        then ``self.growth`` times as many each round. A round scores the hypotheses still in
        contention against the distinct references it newly needs and estimates their expected
        utilities on the samples so far (self-normalised weighted means). It then resamples those
        samples ``self.bootstrap`` times with replacement: a hypothesis whose resampled estimate
        ties or beats the leader's in fewer than ``self.min_wins`` resamples is dropped (a paired
        bootstrap on the same resamples; the leader always stays; a hypothesis below the leader on
        every sample so far is dropped without resampling, since it cannot win any resample). The
        search stops when one hypothesis is left or every sample has been used; then the best
        estimate among the survivors (their exact expected utility) wins, ties broken as exact MBR
        breaks them.

        Cost: the sum over rounds of (hypotheses left) x (new distinct references) evaluations (the
        first round alone is H x 32), plus O(left x distinct references x resamples) flops for the
        bootstrap. Memory: the survivors' utilities against the references so far; when that
        would pass the memory budget, the survivors are finished exactly in blocks instead.
        """
        n_h = len(scorer.hypotheses)
        if n_h == 1:
            return 0, 0, 1
        rng = np.random.default_rng(self.seed)
        # Every sample as a unit (a distinct reference's copies share its weight), in random order.
        unit_ref = np.repeat(np.arange(len(counts)), counts)
        unit_weight = np.repeat(weights / counts, counts)
        # Samples of weight 0 (importance weights of a sample the model rules out) are no evidence.
        unit_ref, unit_weight = unit_ref[unit_weight > 0], unit_weight[unit_weight > 0]
        order = rng.permutation(len(unit_ref))
        unit_ref, unit_weight = unit_ref[order], unit_weight[order]
        n_units = len(unit_ref)
        sign = 1.0 if scorer.metric.higher_is_better else -1.0  # work with "larger is better"
        budget = cell_budget()

        alive = np.arange(n_h)
        column = np.full(len(counts), -1, dtype=np.int64)  # reference -> its column in `utility`
        utility = np.zeros((n_h, 0))
        size, rounds = min(self.first_round, n_units), 0
        while True:
            rounds += 1
            unit_column_ref = unit_ref[:size]
            new = np.unique(unit_column_ref[column[unit_column_ref] < 0])
            if len(alive) * (utility.shape[1] + len(new)) > budget:
                # Pruning has not narrowed the field enough to keep its matrix in memory.
                expected = sign * scorer.expected(alive, weights)
                break
            if len(new):
                column[new] = utility.shape[1] + np.arange(len(new))
                utility = np.hstack([utility, sign * scorer.pairwise(alive, new)])
            unit_column = column[unit_column_ref]
            w = unit_weight[:size]
            # Weight of each reference column among the samples so far (a reference may repeat).
            column_weight = np.bincount(unit_column, weights=w, minlength=utility.shape[1])
            expected = utility @ column_weight / w.sum()
            if size == n_units:
                break
            leader = int(np.argmax(expected))
            # A hypothesis below the leader on every sample so far is below it in every resample
            # (a resample's mean is a weighted mean of those samples): its win rate is exactly 0,
            # without resampling. Only the others are bootstrapped.
            used = np.unique(unit_column)
            open_ = np.flatnonzero((utility[:, used] >= utility[leader, used]).any(axis=1))
            keep = np.zeros(len(alive), dtype=bool)
            if len(open_) > 1:
                local_leader = int(np.searchsorted(open_, leader))
                wins = self._bootstrap_wins(utility[open_], unit_column, w, local_leader, rng)
                keep[open_] = wins >= self.min_wins
            keep[leader] = True
            alive, utility, expected = alive[keep], utility[keep], expected[keep]
            if len(alive) == 1:
                break
            size = min(self.growth * size, n_units)
        if len(alive) == 1:
            return int(alive[0]), rounds, 1
        hypotheses = [scorer.hypotheses[i] for i in alive]
        local = best_index(expected, evidence[alive], hypotheses, higher_is_better=True)
        return int(alive[local]), rounds, len(alive)

    def _bootstrap_wins(
        self,
        utility: np.ndarray,
        unit_column: np.ndarray,
        unit_weight: np.ndarray,
        leader: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Shape (H,): in how many of the ``self.bootstrap`` bootstrap resamples each row's
        weighted mean utility is at least the leader's.

        ``utility`` is (H, D) over distinct references; the n samples map to columns
        ``unit_column`` with weights ``unit_weight``. Each resample draws n samples with
        replacement; the resamples go in chunks so that their (chunk, n) counts stay small.
        """
        n = len(unit_column)
        n_columns = utility.shape[1]
        chunk = max(1, min(self.bootstrap, (1 << 21) // max(n, n_columns)))
        wins = np.zeros(len(utility), dtype=np.int64)
        for start in range(0, self.bootstrap, chunk):
            b = min(chunk, self.bootstrap - start)
            draws = rng.integers(0, n, size=(b, n), dtype=np.int32)
            # Resampled weight of each reference column, per resample: (b, D).
            flat = (np.arange(b)[:, None] * n_columns + unit_column[draws]).ravel()
            column_weight = np.bincount(
                flat, weights=unit_weight[draws].ravel(), minlength=b * n_columns
            ).reshape(b, n_columns)
            means = (utility @ column_weight.T) / column_weight.sum(axis=1)  # (H, b)
            wins += (means >= means[leader]).sum(axis=1)
        return wins
