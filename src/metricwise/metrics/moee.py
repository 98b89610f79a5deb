"""MoEE: sentence similarity from a mixture-of-experts LLM's routing weights and hidden states.

After Ziyue Li and Tianyi Zhou, "Your Mixture-of-Experts LLM Is Secretly an Embedding Model For
Free", ICLR 2025 (arXiv:2410.10814). A decoder-only MoE model reads the text (inside a prompt
template), and two embeddings are taken at the **last real token** of that input:

- **HS**, the final layer's hidden state (after the model's final norm), shape (H,). The last
  token is the only position of a causal model that has attended to the whole text, which is why
  the paper (and its released code, which pads on the left and reads position -1) uses it rather
  than a mean over tokens.
- **RW**, the routing weights: for each MoE layer l, the router's full softmax distribution over
  its E_l experts, ``softmax(router_logits_l)`` (all experts, not only the top-k that were used),
  concatenated over the MoE layers in order, shape (sum_l E_l,). Dense layers (Qwen2-MoE's
  ``mlp_only_layers``) have no router and add nothing.

The utility between two texts a and b (``mode``):

- ``"sum"`` (default; MoEE (sum), the paper's best combination):
  ``u(a, b) = cos(HS_a, HS_b) + alpha * cos(RW_a, RW_b)``, in ``[-(1 + alpha), 1 + alpha]``.
  ``alpha`` defaults to 1.0, the default ``--similarity_weights`` of the authors' evaluation
  script; the paper treats it as a hyperparameter.
- ``"concat"`` (MoEE (concat)): ``u(a, b) = cos([HS_a; RW_a], [HS_b; RW_b])``, in ``[-1, 1]``.
  The released code standardises every dimension over the evaluated batch before concatenating;
  a per-text utility cannot (a text's score would depend on the other samples), so here the raw
  vectors are concatenated and HS, whose norm is far larger than RW's, dominates. The paper
  found the weighted sum better than the concatenation.
- ``"hs"`` or ``"rw"``: the cosine of one embedding alone (the paper's baselines).

u is symmetric and u(x, x) is the maximum (``alpha >= 0`` is required for that); the decision
rule is MBR. Each distinct text is encoded once per ``pairwise`` call, in length-sorted batches,
and its HS and RW go to the model-based utilities' shared bounded cache
(:data:`metricwise.metrics.model_based.CACHE`), keyed by the model, the prompt template,
``max_length``, ``dtype`` and the text (not by ``mode`` or ``alpha``, which only combine them).

The default prompt is the PromptEOL template of the released code,
``This sentence : "{text}" means in one word:"``, which asks the model to sum the sentence up
in one word so that the last token's state and routing describe the whole sentence; the
released code offers it (``prompteol``) and no prompt (``none``). ``prompt=None`` feeds the bare
text. (The released code also turns double quotes into single quotes and appends a period; this
does not. Its OLMoE modelling also hands back the router's pre-softmax logits as RW; this follows
the paper's definition, the softmax distribution.)

Router logits come from the model's own ``output_router_logits=True`` output where it gives
them (OLMoE, Qwen2-MoE, Qwen3-MoE, Mixtral and most transformers MoE classes), otherwise from
forward hooks on the router modules (submodules named ``gate`` or ``router`` whose weight has
one row per expert). Either way a model without a router is refused when the metric is built.

No MoE model ships offline with metricwise: the extraction is tested exactly on tiny randomly
initialised OLMoE, Qwen2-MoE, Qwen3-MoE and Mixtral models built from transformers' config
classes, so the quality of the similarity is not measured here.

Cost: one forward pass per distinct text (batched), then O(C x R x (H + sum_l E_l)) for the
matrix. Needs torch and transformers (the ``[embed]`` or ``[hf]`` extra).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from metricwise.errors import BackendError, InvalidParameterError
from metricwise.metrics.base import register
from metricwise.metrics.model_based import ModelUtility, load_config, shared_model

#: PromptEOL (Jiang et al. 2023), as in MoEE's released evaluation code ("prompteol").
DEFAULT_PROMPT = 'This sentence : "{text}" means in one word:"'
MODES = ("sum", "concat", "hs", "rw")
RouterSource = Literal["auto", "output", "hooks"]

#: Config attributes that transformers' MoE configurations use for the number of routed experts.
_EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_ROUTER_NAMES = ("gate", "router")
_HOW_TO_GET = (
    "No MoE model ships with metricwise: pass a local directory of one (for example a download of "
    "allenai/OLMoE-1B-7B-0924) or, with network access, its hub id."
)
#: Tells apart encoders built from model objects (whose names may coincide) in cache keys.
_ENCODER_IDS = itertools.count()
_NOT_MOE_HELP = (
    "a mixture-of-experts transformers model with a router (OLMoE, Qwen2-MoE, Qwen3-MoE, Mixtral, "
    "or another MoE class whose routers give one logit per expert)"
)


def _expert_count(config: Any) -> int | None:
    """The number of routed experts a transformers config declares, or None for a dense model."""
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        for key in _EXPERT_COUNT_KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 1:
                return value
    return None


def _not_moe(name: str, got: str) -> InvalidParameterError:
    return InvalidParameterError(
        f"The 'model' parameter of moee must be {_NOT_MOE_HELP}. Got {name!r}, {got}, instead."
    )


def router_modules(net: Any) -> list[tuple[str, Any]]:
    """The router submodules of ``net``, in module order: named ``gate`` or ``router``, with a 2-D
    weight of one row per expert (``nn.Linear(hidden, E)`` or transformers' ``*TopKRouter``).

    A name test alone would catch Qwen2-MoE's ``shared_expert_gate`` (one output) or a gated MLP's
    projection; the weight's row count against the expert count keeps only real routers.
    """
    import torch

    n_experts = _expert_count(net.config)
    found = []
    for name, module in net.named_modules():
        if name.rsplit(".", 1)[-1] not in _ROUTER_NAMES:
            continue
        weight = getattr(module, "weight", None)
        if (
            isinstance(weight, torch.Tensor)
            and weight.ndim == 2
            and (n_experts is None or weight.shape[0] == n_experts)
        ):
            found.append((name, module))
    return found


class MoEEncoder:
    """HS and RW embeddings of texts from one MoE model (no cache: :class:`MoEE` caches).

    Parameters
    ----------
    net:
        A loaded transformers MoE model (a base model such as ``OlmoeModel`` or a ``*ForCausalLM``;
        the causal LM's base model is used, so no vocabulary logits are computed).
    tokenizer:
        Its tokenizer. Padding follows ``tokenizer.padding_side`` (left or right); rows are
        padded here, so a tokenizer without a pad token works.
    name:
        Name of the model for messages and signatures.
    device:
        torch device the model is on.
    router_source:
        ``"output"``: the model's ``output_router_logits=True`` output; ``"hooks"``: forward hooks
        on :func:`router_modules`; ``"auto"``: the output where the model gives it, else hooks.

    Raises
    ------
    InvalidParameterError
        The model has no router (a dense model), named in the message.
    """

    def __init__(
        self,
        net: Any,
        tokenizer: Any,
        *,
        name: str,
        device: str = "cpu",
        router_source: RouterSource = "auto",
    ) -> None:
        if router_source not in ("auto", "output", "hooks"):
            raise InvalidParameterError(
                "The 'router_source' parameter of MoEEncoder must be 'auto', 'output' or 'hooks'. "
                f"Got {router_source!r} instead."
            )
        self.name = name
        self.device = device
        self.tokenizer = tokenizer
        #: Tells this encoder's cache entries from another model's with the same name.
        self.key = f"{name}#{next(_ENCODER_IDS)}"
        # A causal LM's base model gives the final-norm hidden states without the (C x vocab)
        # logits; a base model is its own base_model.
        self.net = getattr(net, "base_model", net)
        self._routers = router_modules(self.net)
        self._lock = threading.Lock()
        #: Texts run through the model so far (the cache's effect is visible in tests).
        self.n_encoded = 0
        if _expert_count(self.net.config) is None and not self._routers:
            raise _not_moe(name, f"a {type(net).__name__} whose config names no experts")
        self.pad_id = next(
            (
                i
                for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
                if i is not None
            ),
            0,
        )
        self.router_source = self._choose_source(router_source)
        hs, rw = self._embed_ids([[self._fallback_token()]])
        #: Lengths of HS and of RW (the experts of every MoE layer together), from one probe.
        self.hidden_size, self.routing_size = int(hs.shape[1]), int(rw.shape[1])

    # -- which way the router logits come out ----------------------------------------------------
    def _choose_source(self, wanted: RouterSource) -> str:
        """Probe the model once with a short input: does ``output_router_logits`` give one logit
        tensor per router? Otherwise hooks, if there are routers; otherwise it is not an MoE."""
        ids = [self._fallback_token()] * 2
        if wanted in ("auto", "output"):
            try:
                _, logits, _ = self._run([ids], "output")
            except (TypeError, ValueError, BackendError):
                logits = []
            if logits:
                return "output"
            if wanted == "output":
                raise _not_moe(
                    self.name,
                    f"a {type(self.net).__name__} that returns no router logits for output_router_logits=True",
                )
        if not self._routers:
            raise _not_moe(
                self.name,
                f"a {type(self.net).__name__} with no router module (no 'gate' or 'router' with one "
                "weight row per expert; a Qwen2-MoE whose mlp_only_layers cover every layer has none)",
            )
        return "hooks"

    def _fallback_token(self) -> int:
        tok = self.tokenizer
        for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id):
            if i is not None:
                return int(i)
        return 0

    # -- encoding ----------------------------------------------------------------------------------
    def embed(
        self, texts: Sequence[str], *, prompt: str | None = DEFAULT_PROMPT, max_length: int = 512
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(HS, RW) of each text, float32 arrays of shapes (H,) and (sum_l E_l,), from ONE forward
        pass over all of ``texts`` (the caller batches, and sorts by length to pad little)."""
        if not texts:
            return []
        with self._lock:
            # Tokenizing inside the lock too: it sets the shared tokenizer's truncation side.
            ids = self._tokenize([apply_prompt(prompt, t) for t in texts], max_length)
            hs, rw = self._embed_ids(ids)
            self.n_encoded += len(texts)
        return list(zip(hs, rw, strict=True))

    def _tokenize(self, texts: list[str], max_length: int) -> list[list[int]]:
        # Truncation keeps the END of an over-long input: the last token is the one embedded,
        # and with a template the end holds the instruction ("means in one word:").
        side = self.tokenizer.truncation_side
        try:
            self.tokenizer.truncation_side = "left"
            encoded = self.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        finally:
            self.tokenizer.truncation_side = side
        # An empty text with no template and no BOS gives no token: read the BOS/EOS alone.
        return [list(ids) if len(ids) else [self._fallback_token()] for ids in encoded]

    def _embed_ids(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        hidden, logits, last = self._run(rows, self.router_source)
        batch, seq = len(rows), max(len(r) for r in rows)
        take = torch.arange(batch, device=hidden.device)
        hs = hidden[take, last].float()
        parts = []
        for layer in logits:
            per_token = _per_token_logits(layer, batch, seq, self.name)
            parts.append(torch.softmax(per_token[take, last].float(), dim=-1))
        rw = torch.cat(parts, dim=-1)
        return hs.cpu().numpy(), rw.cpu().numpy()

    def _run(self, rows: list[list[int]], source: str) -> tuple[Any, list[Any], Any]:
        """One forward pass on padded ``rows``: the last hidden states (B, S, H), the router
        logits of each MoE layer ((B*S, E) or (B, S, E)), and each row's last real token (B,)."""
        import torch

        batch, seq = len(rows), max(len(r) for r in rows)
        input_ids = torch.full((batch, seq), self.pad_id, dtype=torch.long)
        mask = torch.zeros((batch, seq), dtype=torch.long)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for i, ids in enumerate(rows):
            span = slice(seq - len(ids), seq) if left else slice(0, len(ids))
            input_ids[i, span] = torch.tensor(ids, dtype=torch.long)
            mask[i, span] = 1
        # Positions count real tokens only, so a left-padded row sees the positions it would see
        # alone. Rotary embeddings (every MoE class here) only see relative positions, so this
        # matters to models with absolute position embeddings; it costs nothing for the others.
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        # The last real token of each row, for either padding side.
        last = (seq - 1 - mask.flip(dims=[1]).argmax(dim=1)).to(self.device)
        inputs = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": positions.to(self.device),
            "use_cache": False,
        }
        captured: list[Any] = []
        handles = []
        if source == "hooks":

            def keep(_module: Any, _args: Any, output: Any) -> None:
                captured.append(output[0] if isinstance(output, (tuple, list)) else output)

            handles = [module.register_forward_hook(keep) for _, module in self._routers]
        try:
            with torch.inference_mode():
                if source == "output":
                    out = self.net(**inputs, output_router_logits=True)
                    captured = [
                        t for t in (getattr(out, "router_logits", None) or ()) if t is not None
                    ]
                else:
                    out = self.net(**inputs)
        finally:
            for handle in handles:
                handle.remove()
        return out.last_hidden_state, captured, last


def _per_token_logits(layer: Any, batch: int, seq: int, name: str) -> Any:
    """Router logits of one layer as (B, S, E), from (B*S, E) or (B, S, E)."""
    if layer.ndim == 3 and tuple(layer.shape[:2]) == (batch, seq):
        return layer
    if layer.ndim == 2 and layer.shape[0] == batch * seq:
        return layer.reshape(batch, seq, layer.shape[1])
    raise BackendError(
        f"The router logits of {name!r} have shape {tuple(layer.shape)}; moee expected "
        f"({batch * seq}, experts) or ({batch}, {seq}, experts) for a batch of {batch} x {seq} tokens."
    )


def apply_prompt(prompt: str | None, text: str) -> str:
    """The model's input for ``text``: ``prompt`` with ``{text}`` replaced (the bare text for None).

    Plain replacement, not ``str.format``: a template may hold other braces (JSON, LaTeX).
    """
    return text if prompt is None else prompt.replace("{text}", text)


def _check_moe_config(model: str) -> str:
    """Where ``model`` loads from, once its config shows experts: a dense model is refused here,
    before its weights are read. Returns the directory or hub id for ``from_pretrained``."""
    from metricwise.models import resolve_model

    resolved = resolve_model(model)
    if resolved.kind == "gguf":
        got = (
            "a named dense model (no router)"
            if resolved.named is not None
            else "a GGUF file (moee reads router logits with transformers)"
        )
        raise _not_moe(model, got)
    config = load_config(resolved.reference, model, "moee", how_to_get=_HOW_TO_GET)
    if _expert_count(config) is None:
        raise _not_moe(
            model, f"a {config.model_type!r} model whose config names no experts (a dense model)"
        )
    return resolved.reference


def _load_encoder(
    model: str, source: str, tokenizer: str | None, device: str, dtype: str
) -> MoEEncoder:
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer or source)
        net = AutoModel.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise BackendError(f"transformers could not load {model!r}: {exc}. {_HOW_TO_GET}") from exc
    try:
        net.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise BackendError(f"Could not move {model!r} to device {device!r}: {exc}") from exc
    net.eval()
    return MoEEncoder(net, tok, name=model, device=device)


@register("moee")
class MoEE(ModelUtility):
    """MoEE similarity of two texts from an MoE LLM's hidden state and routing weights (MBR).

    ``u(a, b) = cos(HS_a, HS_b) + alpha * cos(RW_a, RW_b)`` for ``mode="sum"``; see the module
    docstring for the definitions of HS and RW, the other modes, and the citation
    (Li and Zhou, ICLR 2025).

    Parameters
    ----------
    model:
        Required: a transformers MoE model, as a local directory or hub id (a hub id needs
        network access), or an already loaded model object (then ``tokenizer`` must be the
        tokenizer object). No MoE model ships with metricwise.
    mode:
        ``"sum"`` (default), ``"concat"``, ``"hs"`` or ``"rw"``.
    alpha:
        Weight of the RW similarity in ``"sum"`` mode, >= 0 (default 1.0, the released code's).
    prompt:
        Template with a ``{text}`` placeholder; default :data:`DEFAULT_PROMPT` (PromptEOL).
        ``None`` feeds the bare text.
    tokenizer:
        Tokenizer directory or hub id when it is not the model's own; required (an object)
        when ``model`` is a model object.
    device, dtype:
        torch device string; weights' dtype (``"auto"``: the checkpoint's, or ``"float32"``,
        ``"bfloat16"``, ``"float16"``). Routing softmax and similarities are computed in float32
        / float64 whatever the dtype.
    batch_size:
        Texts per forward pass.
    max_length:
        Most tokens per input; longer inputs keep their last ``max_length`` tokens.
    progress:
        Show a progress bar on stderr when many new texts are encoded at once.

    Raises
    ------
    InvalidParameterError
        No model, a model that is not a mixture of experts (no router), or a bad setting; raised
        when the metric is built, before any sampling.
    BackendError
        transformers could not load the model (offline with a hub id, a broken directory).

    Examples
    --------
    >>> u = MoEE("allenai/OLMoE-1B-7B-0924", device="cuda")  # doctest: +SKIP
    >>> decide(samples, u).output  # doctest: +SKIP
    """

    higher_is_better = True
    symmetric = True

    def __init__(
        self,
        model: Any = None,
        *,
        mode: str = "sum",
        alpha: float = 1.0,
        prompt: str | None = DEFAULT_PROMPT,
        tokenizer: Any = None,
        device: str = "cpu",
        dtype: str = "auto",
        batch_size: int = 16,
        max_length: int = 512,
        progress: bool = True,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size, progress=progress)
        if mode not in MODES:
            raise InvalidParameterError(
                f"The 'mode' parameter of moee must be one of {', '.join(MODES)}. Got {mode!r} instead."
            )
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, (int, float))
            or not math.isfinite(alpha)
            or alpha < 0
        ):
            # A negative weight would let another text score above the text itself.
            raise InvalidParameterError(
                f"The 'alpha' parameter of moee must be a finite number >= 0. Got {alpha!r} instead."
            )
        if prompt is not None and (not isinstance(prompt, str) or "{text}" not in prompt):
            raise InvalidParameterError(
                "The 'prompt' parameter of moee must be None or a string with a {text} placeholder. "
                f"Got {prompt!r} instead."
            )
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise InvalidParameterError(
                f"The 'max_length' parameter of moee must be an int >= 1. Got {max_length!r} instead."
            )
        if dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise InvalidParameterError(
                "The 'dtype' parameter of moee must be 'auto', 'float32', 'bfloat16' or 'float16'. "
                f"Got {dtype!r} instead."
            )
        self.mode = mode
        self.alpha = float(alpha)
        self.prompt = prompt
        self.max_length = max_length
        self.dtype = dtype
        if model is None or (isinstance(model, str) and not model.strip()):
            raise InvalidParameterError(
                f"The 'model' parameter of moee must name {_NOT_MOE_HELP}, as a local directory or a "
                f"hub id. Got {model!r} instead. {_HOW_TO_GET}"
            )
        self._encoder: MoEEncoder
        if isinstance(model, str):
            if tokenizer is not None and not isinstance(tokenizer, str):
                raise InvalidParameterError(
                    "The 'tokenizer' parameter of moee must be a directory or hub id when 'model' is "
                    f"one. Got {type(tokenizer).__name__} instead."
                )
            self.model = model
            source = _check_moe_config(model)
            # One loaded model per (source, tokenizer, device, dtype) in the process, whatever
            # the number of metric objects (predict builds one per prompt).
            self._encoder = shared_model(
                ("moee", source, str(tokenizer), self.device, dtype),
                lambda: _load_encoder(model, source, tokenizer, self.device, dtype),
            )
        else:
            if tokenizer is None or isinstance(tokenizer, str):
                raise InvalidParameterError(
                    "The 'tokenizer' parameter of moee must be the tokenizer object when 'model' is a "
                    f"loaded model. Got {tokenizer!r} instead."
                )
            config = getattr(model, "config", None)
            self.model = (
                str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", ""))
                or type(model).__name__
            )
            model.to(self.device).eval()
            self._encoder = MoEEncoder(model, tokenizer, name=self.model, device=self.device)

    def _score_one(self, pred: Any, ref: Any) -> float:
        return float(self.pairwise([pred], [ref])[0, 0])

    def pairwise(self, cands: Sequence[Any], refs: Sequence[Any]) -> np.ndarray:
        """The (C, R) float64 matrix of u(cands[i], refs[j]); one forward pass per distinct text."""

        def unique(c: list[Any], r: list[Any]) -> np.ndarray:
            c, r = [str(x) for x in c], [str(x) for x in r]
            hs, rw = self.embed(c + r)
            out = self.similarity(hs[: len(c)], rw[: len(c)], hs[len(c) :], rw[len(c) :])
            # Identical texts are exactly at the maximum; float rounding would otherwise leave
            # them a hair below a near-duplicate. Each side is distinct, so one twin at most.
            ref_index = {text: j for j, text in enumerate(r)}
            for i, text in enumerate(c):
                j = ref_index.get(text)
                if j is not None:
                    out[i, j] = self.maximum
            return out

        return self._pairwise_deduplicated(cands, refs, unique)

    @property
    def maximum(self) -> float:
        """u(x, x): 1 + alpha in ``"sum"`` mode, 1 otherwise."""
        return 1.0 + self.alpha if self.mode == "sum" else 1.0

    def similarity(
        self, hs_a: np.ndarray, rw_a: np.ndarray, hs_b: np.ndarray, rw_b: np.ndarray
    ) -> np.ndarray:
        """u between embedded rows: HS (A, H), RW (A, K) against HS (B, H), RW (B, K) -> (A, B)."""
        if self.mode == "concat":
            return _cosine(np.hstack([hs_a, rw_a]), np.hstack([hs_b, rw_b]))
        if self.mode == "hs":
            return _cosine(hs_a, hs_b)
        if self.mode == "rw":
            return _cosine(rw_a, rw_b)
        return _cosine(hs_a, hs_b) + self.alpha * _cosine(rw_a, rw_b)

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """HS (n, H) and RW (n, sum_l E_l) of ``texts`` under this metric's prompt, float32.

        Texts not in the cache run once each, in batches of ``batch_size`` in order of length
        (little padding); a text that repeats is looked up once.
        """
        texts = [str(t) for t in texts]
        enc = self._encoder
        if not texts:
            return np.zeros((0, enc.hidden_size), np.float32), np.zeros(
                (0, enc.routing_size), np.float32
            )
        distinct = sorted(dict.fromkeys(texts), key=len)

        def compute(batch: list[tuple[str, ...]]) -> list[Any]:
            return enc.embed([k[0] for k in batch], prompt=self.prompt, max_length=self.max_length)

        values = self._cached(
            [(t,) for t in distinct], compute, lambda v: v[0].nbytes + v[1].nbytes, "moee"
        )
        by_text = dict(zip(distinct, values, strict=True))
        return np.stack([by_text[t][0] for t in texts]), np.stack([by_text[t][1] for t in texts])

    def settings(self) -> dict[str, Any]:
        alpha = {"alpha": f"{self.alpha:g}"} if self.mode == "sum" else {}
        prompt = "none" if self.prompt is None else repr(self.prompt)
        return {
            "mode": self.mode,
            **alpha,
            "prompt": prompt,
            "max_length": self.max_length,
            "dtype": self.dtype,
        }

    def _namespace(self) -> str:
        # The embeddings depend on the model, its input and precision, not on how the two
        # similarities are combined: every mode and alpha share one cache entry per text.
        prompt = "none" if self.prompt is None else self.prompt
        return f"moee:{self._encoder.key}:{prompt}:{self.max_length}:{self.dtype}"


def _cosine(a: np.ndarray, b: np.ndarray) -> Any:
    """(A, B) cosine similarities of the rows of a and b, float64, clipped to [-1, 1]; a zero row
    has similarity 0 to everything."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    a64 /= np.maximum(np.linalg.norm(a64, axis=1, keepdims=True), 1e-300)
    b64 /= np.maximum(np.linalg.norm(b64, axis=1, keepdims=True), 1e-300)
    return np.clip(a64 @ b64.T, -1.0, 1.0)
