"""The score of a reward model: a transformers sequence-classification model read as a utility.

``reward`` is pointwise: it scores one answer to a question, ``u(c, y) = r(question, c)``, so
MBR with it is best-of-N (``decide`` returns the highest-reward candidate without a pairwise
matrix). The question is ``decide``'s ``context`` (by default the prompt of the
``SampleSet``); without one, the answer is scored alone.

Input format: with a chat template (the tokenizer's ``chat_template``), the conversation
``[{"role": "user", "content": question}, {"role": "assistant", "content": answer}]`` rendered
by it, as reward models trained on chats expect; otherwise the plain text
``question + "\\n\\n" + answer`` (or the answer alone) with the tokenizer's special tokens.

Score: a single-logit head (``num_labels == 1``, the usual reward model) gives that logit; a
two-label head gives ``logit[1] - logit[0]``, the log-odds of label 1 ("preferred" or
"good"; ``log p(1) - log p(0)`` in nats). A higher reward is better.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError
from metricwise.metrics.base import register
from metricwise.metrics.model_based import (
    PointwiseUtility,
    load_config,
    model_source,
    shared_model,
)

_HOW_TO_GET = (
    "No reward model ships with metricwise: pass the directory of a transformers "
    "sequence-classification reward model (save_pretrained output), or a hub id with network "
    "access or in the local hub cache."
)


class _RewardModel:
    """A tokenizer and a sequence-classification model, shared per (model, device); the
    weights load on first use."""

    def __init__(self, source: str, model: str, device: str) -> None:
        from transformers import AutoTokenizer

        self.source, self.model_name, self.device = source, model, device
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        if self.tokenizer.pad_token_id is None:
            # Batches need a padding token; the model finds each row's last real token by it.
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        self._model: Any = None
        self._lock = threading.Lock()

    def model(self) -> Any:
        with self._lock:
            if self._model is None:
                from transformers import AutoModelForSequenceClassification

                model, info = AutoModelForSequenceClassification.from_pretrained(
                    self.source, output_loading_info=True
                )
                head = [k for k in info.get("missing_keys", ()) if _is_head_weight(k)]
                if head:
                    raise InvalidParameterError(
                        f"The 'model' parameter of reward must be a reward model with a trained "
                        f"score head. Got {self.model_name!r} instead, whose weights have no "
                        f"{', '.join(sorted(head))} (transformers would initialise them at "
                        f"random). {_HOW_TO_GET}"
                    )
                if model.config.pad_token_id is None:
                    model.config.pad_token_id = self.tokenizer.pad_token_id
                self._model = model.to(self.device).eval()
            return self._model

    def render(self, question: str | None, answer: str) -> str:
        """The text the model reads for ``answer`` to ``question``."""
        if self.chat:
            turns = [
                {"role": "user", "content": question or ""},
                {"role": "assistant", "content": answer},
            ]
            return str(self.tokenizer.apply_chat_template(turns, tokenize=False))
        return answer if question is None else f"{question}\n\n{answer}"

    def scores(self, pairs: list[tuple[str, ...]]) -> list[float]:
        """Rewards of (question, answer) pairs (question "" for none), one padded pass."""
        import torch

        texts = [self.render(q or None, a) for q, a in pairs]
        model = self.model()
        limit = min(
            int(getattr(self.tokenizer, "model_max_length", 1 << 30) or 1 << 30),
            int(getattr(model.config, "max_position_embeddings", 1 << 30) or 1 << 30),
        )
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=limit,
            # A chat template writes its own special tokens (BOS) into the text.
            add_special_tokens=not self.chat,
            return_tensors="pt",
        ).to(self.device)
        if "token_type_ids" in batch and "token_type_ids" not in _forward_inputs(model):
            del batch["token_type_ids"]
        with torch.inference_mode():
            logits = model(**batch).logits.float().cpu().numpy()
        if logits.shape[1] == 1:
            return [float(x) for x in logits[:, 0]]
        return [float(x) for x in logits[:, 1] - logits[:, 0]]


def _forward_inputs(model: Any) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _is_head_weight(key: str) -> bool:
    """Whether a parameter name belongs to a sequence-classification head."""
    return key.split(".")[0] in ("score", "classifier", "classification_head", "v_head")


@register("reward")
class Reward(PointwiseUtility):
    """Reward of a sequence-classification model for the answer to the question; higher is better.

    Parameters
    ----------
    model:
        Required: the directory of a transformers ``AutoModelForSequenceClassification`` reward
        model (``num_labels`` 1 or 2), or a hub id.
    device, batch_size, progress:
        See :class:`~metricwise.metrics.model_based.ModelUtility`.

    The model is checked when the utility is built (its config must name a
    ``*ForSequenceClassification`` architecture with 1 or 2 labels, and its tokenizer must
    load), so that a wrong model stops a ``predict`` before any sampling; the weights load on
    first use, and a checkpoint without the score head's weights is refused then.
    """

    higher_is_better = True

    def __init__(
        self,
        model: str | None = None,
        device: str = "cpu",
        batch_size: int = 8,
        progress: bool = True,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size, progress=progress)
        if model is None:
            raise InvalidParameterError(
                "The 'model' parameter of reward is required: the reward model's directory or hub "
                f"id (--metric_args model=PATH). Got None instead. {_HOW_TO_GET}"
            )
        source = model_source(model, self.name, how_to_get=_HOW_TO_GET)
        config = load_config(source, model, self.name, how_to_get=_HOW_TO_GET)
        architectures = list(getattr(config, "architectures", None) or [])
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise InvalidParameterError(
                "The 'model' parameter of reward must be a sequence-classification model with a "
                "score head (config.json 'architectures' ending in 'ForSequenceClassification'). "
                f"Got {model!r} instead, whose architectures are {architectures or 'not given'}. "
                "A causal or masked language model is not a reward model. " + _HOW_TO_GET
            )
        labels = int(getattr(config, "num_labels", 0))
        if labels not in (1, 2):
            raise InvalidParameterError(
                "The 'model' parameter of reward must have a score head of 1 label (the reward) "
                f"or 2 (a preference classifier). Got {model!r} instead, with num_labels={labels}."
            )
        self.model = model
        self._source = source
        self._scorer: _RewardModel = shared_model(
            ("reward", source, self.device), lambda: _RewardModel(source, model, self.device)
        )

    def settings(self) -> dict[str, Any]:
        return {"format": "chat" if self._scorer.chat else "plain"}

    def _namespace(self) -> str:
        return f"reward({self._source})"

    def pointwise_scores(self, cands: Sequence[Any], *, context: str | None = None) -> np.ndarray:
        """Shape (C,) float64: the reward of each candidate as the answer to ``context``."""
        question = "" if context is None else str(context)
        values = self._cached(
            [(question, str(c)) for c in cands],
            self._scorer.scores,
            lambda value: 8,
            f"reward: scoring with {self.model}",
        )
        return np.asarray(values, dtype=np.float64)
