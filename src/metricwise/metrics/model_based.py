"""Shared machinery of the utilities that run a model (``bertscore``, ``reward``, ``judge``,
``moee``; the sentence encoder of ``embedding_cosine`` and few-shot selection uses its cache).

What every model-based utility gets from here:

- **Each distinct text is encoded (or scored) once.** Results are kept in one process-wide
  LRU cache, :data:`CACHE`, keyed by a SHA-256 hash of the utility, its model and settings and
  the text (or the (question, text) pair of a pointwise scorer), so that a decision computes
  each distinct sample once and the next decision over overlapping samples (a predict run, an
  eval with several decoders) reuses them. The cache is bounded in bytes
  (:data:`DEFAULT_CACHE_BYTES`, 256 MiB): when a new entry would pass the bound, the least
  recently used entries are dropped.
- **Forward passes are batched** (``batch_size`` texts per pass) on ``device`` (``"cpu"``,
  ``"cuda"``, ``"cuda:1"``, ``"mps"``), with a progress bar on stderr when more than
  :data:`PROGRESS_MIN_TEXTS` texts are new.
- **Models load lazily and are shared per process**: constructing a utility only checks its
  model (the configuration and tokenizer, read from disk, so that a missing, headless or
  offline-unavailable model is an error before any sampling starts); the weights load on first
  use, once per (kind, model, device) whatever the number of utility objects.
- **The signature names the model and every setting that changes a value**, so that a
  reported number can be reproduced.

Writing a new one: subclass :class:`ModelUtility` (or :class:`PointwiseUtility` for a score
of one answer, ``u(c, y) = s(c)``), check the model in ``__init__`` with :func:`check_model`,
load it with :func:`shared_model`, and compute new texts through :meth:`ModelUtility._cached`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError, import_torch
from metricwise.metrics.base import Metric

#: The cache's bound, in bytes of cached arrays (their ``nbytes``; keys and bookkeeping add
#: about 200 bytes per entry). BERTScore keeps a (tokens, hidden) float32 matrix per text:
#: about 40 KB for a 25-token sentence with all-MiniLM-L6-v2, so some 6,000 texts fit.
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
#: New texts in one call above which a progress bar is shown (when ``progress`` is on).
PROGRESS_MIN_TEXTS = 256


class LRUCache:
    """A thread-safe least-recently-used map bounded by the bytes of its values.

    Parameters
    ----------
    max_bytes:
        Upper bound of the summed ``nbytes`` of the cached values. A single value larger than
        the bound is not cached. 0 disables caching.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise InvalidParameterError(
                f"The 'max_bytes' parameter of LRUCache must be an int >= 0. Got {max_bytes!r} instead."
            )
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes) -> Any:
        """The value under ``key`` (marked as just used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: bytes, value: Any, nbytes: int) -> None:
        """Store ``value`` (``nbytes`` large), dropping the least recently used to fit."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if nbytes > self.max_bytes:
                return
            while self._items and self._bytes + nbytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped
            self._items[key] = (value, nbytes)
            self._bytes += nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the values held now (<= ``max_bytes``)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


#: The process-wide cache of every model-based utility. Set ``CACHE.max_bytes`` to change the
#: bound (it applies from the next insertion) or call ``CACHE.clear()`` to free it.
CACHE = LRUCache()


def text_key(namespace: str, *parts: str) -> bytes:
    """SHA-256 digest of ``namespace`` and ``parts``, unambiguous (each part length-prefixed)."""
    digest = hashlib.sha256(namespace.encode("utf-8"))
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.digest()


_MODELS: dict[tuple[str, ...], Any] = {}
_MODELS_LOCK = threading.Lock()


def shared_model(key: tuple[str, ...], loader: Callable[[], Any]) -> Any:
    """The object ``loader()`` built for ``key``, built once per process (thread-safe).

    ``key`` names everything the loaded object depends on: the kind of utility, the model's
    resolved source and the device.
    """
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = loader()
        return _MODELS[key]


def require_torch(utility: str) -> None:
    """Raise MissingDependencyError when torch or transformers is not installed."""
    import_torch(f"The {utility} utility", extra="embed", with_transformers=True)


def model_source(model: object, utility: str, *, how_to_get: str) -> str:
    """Where to load ``model`` from: a packaged model's directory, a local directory or a hub id.

    Raises InvalidParameterError for a value that is not a non-empty string, or that looks like
    a path (absolute, relative, or with a separator) but is not a directory.
    """
    from metricwise.models import packaged_model_dir

    if not isinstance(model, str) or not model.strip():
        raise InvalidParameterError(
            f"The 'model' parameter of {utility} must be a model directory or a hub id. "
            f"Got {model!r} instead. {how_to_get}"
        )
    packaged = packaged_model_dir(model)
    if packaged is not None:
        return str(packaged)
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path)
    # A hub id is "name" or "org/name"; anything else with a separator is meant as a path.
    looks_like_path = (
        model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model or path.exists()
    )
    if looks_like_path:
        raise InvalidParameterError(
            f"The 'model' parameter of {utility} must be a model directory or a hub id. "
            f"Got {model!r} instead, which is not a directory. {how_to_get}"
        )
    return model


def load_config(source: str, model: str, utility: str, *, how_to_get: str) -> Any:
    """The transformers configuration of ``source``; a clear error when it cannot be read.

    A hub id is looked up in the local cache only when ``HF_HUB_OFFLINE`` (or
    ``TRANSFORMERS_OFFLINE``) is set; either way a failure names the model and says how to get
    it.
    """
    from transformers import AutoConfig

    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise InvalidParameterError(
            f"The 'model' parameter of {utility} must name a transformers model that can be "
            f"loaded here. Got {model!r} instead, a directory without a config.json. {how_to_get}"
        )
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.rstrip(".")
        raise InvalidParameterError(
            f"The 'model' parameter of {utility} must name a transformers model that can be "
            f"loaded here (a directory with config.json, or a hub id in the local cache when "
            f"offline). Got {model!r} instead: {reason}. {how_to_get}"
        ) from None


def check_device(device: object, utility: str) -> str:
    """``device`` as a torch device string; raise when torch cannot use it on this machine."""
    import torch

    if not isinstance(device, str):
        raise InvalidParameterError(
            f"The 'device' parameter of {utility} must be a torch device string such as 'cpu' or "
            f"'cuda'. Got {device!r} instead."
        )
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise InvalidParameterError(
            f"The 'device' parameter of {utility} must be a torch device string such as 'cpu' or "
            f"'cuda'. Got {device!r} instead."
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError(
            f"The 'device' parameter of {utility} is {device!r}, but torch sees no CUDA device "
            "here. Got torch.cuda.is_available() == False; use device='cpu'."
        )
    return device


def check_positive_int(value: object, name: str, utility: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParameterError(
            f"The '{name}' parameter of {utility} must be an int >= 1. Got {value!r} instead."
        )
    return value


class ModelUtility(Metric):
    """Base of the utilities that run a model: batching, the shared cache, progress, signature.

    Parameters
    ----------
    device:
        torch device (``"cpu"`` by default, ``"cuda"`` on a GPU).
    batch_size:
        Texts per forward pass.
    progress:
        Show a progress bar on stderr when more than :data:`PROGRESS_MIN_TEXTS` new texts are
        computed in one call.

    Subclasses set ``self.model`` (the name the user gave) and list in :meth:`settings` every
    setting that changes a value; both enter the signature and the cache keys.
    """

    model: str = ""

    def __init__(self, *, device: str = "cpu", batch_size: int = 32, progress: bool = True) -> None:
        require_torch(self.name)
        self.device = check_device(device, self.name)
        self.batch_size = check_positive_int(batch_size, "batch_size", self.name)
        self.progress = bool(progress)

    def settings(self) -> dict[str, Any]:
        """The settings that change a value (batch size and device do not, beyond rounding)."""
        return {}

    def signature(self) -> str:
        parts = [f"model={self.model}", *(f"{k}={v}" for k, v in self.settings().items())]
        return f"{self.name}({','.join(parts)})"

    def _namespace(self) -> str:
        return self.signature()

    def _cached(
        self,
        keys: Sequence[tuple[str, ...]],
        compute: Callable[[list[tuple[str, ...]]], list[Any]],
        nbytes: Callable[[Any], int],
        description: str,
    ) -> list[Any]:
        """One value per key, computing only the keys not in :data:`CACHE`, in batches.

        Parameters
        ----------
        keys:
            What each value is computed from: ``(text,)`` or ``(question, text)``.
        compute:
            Maps a batch of at most ``batch_size`` distinct keys to their values.
        nbytes:
            The size of a value, for the cache's bound.
        description:
            The progress bar's label.
        """
        namespace = self._namespace()
        hashes = [text_key(namespace, *k) for k in keys]
        found: dict[bytes, Any] = {}
        missing: dict[bytes, tuple[str, ...]] = {}
        for h, k in zip(hashes, keys, strict=True):
            if h in found or h in missing:
                continue
            value = CACHE.get(h)
            if value is None:
                missing[h] = k
            else:
                found[h] = value
        if missing:
            from metricwise.progress import Progress

            todo = list(missing.items())
            show = self.progress and len(todo) > PROGRESS_MIN_TEXTS
            with Progress(len(todo), description, unit="text", enabled=show) as bar:
                for start in range(0, len(todo), self.batch_size):
                    batch = todo[start : start + self.batch_size]
                    values = compute([k for _, k in batch])
                    for (h, _), value in zip(batch, values, strict=True):
                        found[h] = value
                        CACHE.put(h, value, nbytes(value))
                    bar.update(start + len(batch))
        return [found[h] for h in hashes]


class PointwiseUtility(ModelUtility):
    """A utility of one answer, ``u(c, y) = s(c)`` whatever the sample ``y`` (a reward model).

    MBR with it is best-of-N: ``decide`` returns the argmax of :meth:`pointwise_scores` without
    a pairwise matrix (see :attr:`Metric.pointwise`). ``pairwise`` still works (each row is the
    candidate's score repeated), so that everything written against the matrix contract runs.
    """

    pointwise = True
    symmetric = False

    def pointwise_scores(self, cands: Sequence[Any], *, context: str | None = None) -> np.ndarray:
        """Shape (C,) float64: the score of each candidate (as an answer to ``context``)."""
        raise NotImplementedError

    def _score_one(self, pred: Any, ref: Any) -> float:
        return float(self.pointwise_scores([pred])[0])

    def pairwise(self, cands: Sequence[Any], refs: Sequence[Any]) -> np.ndarray:
        scores = self.pointwise_scores(cands)
        return np.repeat(scores[:, None], len(refs), axis=1)
