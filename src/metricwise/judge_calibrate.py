"""Active-Critic calibration of the ``judge`` utility: ``metricwise judge-calibrate``.

After Active-Critic (Xu et al., "Large Language Models Are Active Critics in NLG Evaluation",
2024): from a few labelled examples the judge model first infers the task and its evaluation
criteria, then the prompt that agrees best with the labels is chosen.

1. **Split** the labelled examples (JSONL lines ``{"question", "candidate", "reference"?,
   "score"}``, scores on ``label_range``) into a calibration part and a held-back part: a
   permutation seeded by ``seed``, the last ``round(held_back * n)`` examples held back.
2. **Infer** the task (one sentence) and the criteria (one or two sentences) by greedy
   generation from the judge model, shown ``infer_examples`` calibration examples with their
   scores. Empty inferences fall back to the generic text (recorded in the spec).
3. **Choose** among candidate scoring prompts, the grid criteria {inferred, generic} x wording
   {``rate``, ``grade``} x shots {0, ``shots``}: each rates the calibration examples
   (regression-aware, :class:`~metricwise.metrics.judge.Judge`), and the prompt with the highest
   Spearman correlation with the labels wins (ties: Pearson; then the earlier in the grid).
   Shots are calibration examples at evenly spaced ranks of the labels (lowest to highest),
   their labels mapped linearly onto 1..K and rounded; a prompt with shots is scored on the
   calibration examples other than its shots, so no label leaks into its own rating.
4. **Report** Pearson, Spearman and Kendall's tau-b on the held-back examples for the chosen
   prompt and for the fixed-criteria prompt (generic criteria, ``rate`` wording, no shots: the
   default ``judge``), and write the spec (YAML) that ``judge`` loads with ``spec=``, with
   explanations of a few held-back judgements.

Cost: (2 + 8 prompts x calibration examples + 2 x held-back examples) judge calls, each one
forward pass over a prompt of a few hundred tokens, plus the explanations' short decodes.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError
from metricwise.metrics.judge import (
    _REFERENCE_LINES,
    GENERIC_CRITERIA,
    GENERIC_CRITERIA_REFERENCE,
    WORDINGS,
    Judge,
    JudgeSpec,
    check_scale,
)

#: Fewest examples in each part: correlations of fewer items say nothing.
MIN_PER_PART = 4


@dataclass(frozen=True)
class Example:
    question: str
    candidate: str
    reference: str | None
    score: float


def read_examples(path: str | Path, label_range: tuple[float, float]) -> list[Example]:
    """Labelled examples from a JSONL file; errors name the file and line.

    Each line is an object with ``question`` and ``candidate`` (strings), ``score`` (a finite
    number in ``label_range``) and optionally ``reference`` (a string or null).
    """
    import json

    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidParameterError(
            f"The '--examples' option must be a JSONL file of labelled examples. Got {str(path)!r} "
            "instead, which is not a file."
        )
    lo, hi = label_range
    out: list[Example] = []
    with p.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{p}, line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidParameterError(f"{where} is not UTF-8.") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidParameterError(f"{where} is not JSON: {exc.msg}.") from None
            if not isinstance(record, dict):
                raise InvalidParameterError(
                    f"{where} must be an object with question, candidate and score. Got {line.strip()[:80]!r} instead."
                )
            for name in ("question", "candidate"):
                if not isinstance(record.get(name), str):
                    raise InvalidParameterError(
                        f"{where} must have a '{name}' string. Got {record.get(name)!r} instead."
                    )
            reference = record.get("reference")
            if reference is not None and not isinstance(reference, str):
                raise InvalidParameterError(
                    f"{where} has a 'reference' that is not a string or null. Got {reference!r} instead."
                )
            score = record.get("score")
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise InvalidParameterError(
                    f"{where} must have a numeric 'score'. Got {score!r} instead."
                )
            if not math.isfinite(score) or not lo <= score <= hi:
                raise InvalidParameterError(
                    f"{where} has score {score!r}, outside the label range [{lo:g}, {hi:g}] "
                    "(--label_range)."
                )
            out.append(Example(record["question"], record["candidate"], reference, float(score)))
    return out


def split_examples(
    examples: list[Example], held_back: float, seed: int, shots: int
) -> tuple[list[Example], list[Example]]:
    """(calibration, held-back): a seeded permutation, the last ``round(held_back * n)`` held back.

    Raises :class:`InvalidParameterError` when either part would have fewer than
    :data:`MIN_PER_PART` examples to score (the calibration part beyond its ``shots``), or
    its labels are all equal.
    """
    if not 0.0 < held_back < 1.0:
        raise InvalidParameterError(
            f"The '--held_back' option must be a fraction in (0, 1). Got {held_back!r} instead."
        )
    n = len(examples)
    n_held = round(held_back * n)
    n_cal = n - n_held
    if n_held < MIN_PER_PART or n_cal - shots < MIN_PER_PART:
        need = math.ceil(max(MIN_PER_PART / held_back, (MIN_PER_PART + shots) / (1 - held_back)))
        raise InvalidParameterError(
            f"The '--examples' file must hold enough labelled examples for {MIN_PER_PART} held-back "
            f"and {MIN_PER_PART} + {shots} (shots) calibration examples at --held_back {held_back:g}: "
            f"about {need}. Got {n} instead. Add labelled examples"
            + (", or lower --shots." if shots else ".")
        )
    order = np.random.default_rng(seed).permutation(n)
    calibration = [examples[i] for i in order[:n_cal]]
    held = [examples[i] for i in order[n_cal:]]
    for name, part in (("calibration", calibration), ("held-back", held)):
        if len({e.score for e in part}) < 2:
            raise InvalidParameterError(
                f"The labels of the {name} part are all equal ({part[0].score:g}): agreement with "
                "them is undefined. Give examples with different scores."
            )
    return calibration, held


def agreement(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Pearson, Spearman and Kendall's tau-b of ``predictions`` with ``labels`` (shape (n,) each).

    Unparsable judgements (NaN predictions) are left out and counted in ``unparsable``.
    """
    from metricwise.evaluate.stats import kendall_tau_b, pearson_rows, spearman_rows

    predictions = np.asarray(predictions, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    ok = np.isfinite(predictions)
    x, y = predictions[ok], labels[ok]
    values = np.stack([x, y], axis=1)
    idx = np.arange(x.size)[None, :]
    if x.size >= 2:
        pearson = float(pearson_rows(values, idx)[0])
        spearman = float(spearman_rows(values, idx)[0])
    else:
        pearson = spearman = math.nan
    return {
        "pearson": pearson,
        "spearman": spearman,
        "kendall": kendall_tau_b(x, y) if x.size >= 2 else math.nan,
        "n": int(x.size),
        "unparsable": int((~ok).sum()),
    }


def to_scale(label: float, label_range: tuple[float, float], scale: int) -> int:
    """A label mapped linearly from ``label_range`` onto 1..``scale``, rounded."""
    lo, hi = label_range
    return round(1 + (label - lo) / (hi - lo) * (scale - 1))


def pick_shots(calibration: list[Example], k: int) -> list[int]:
    """Indices of ``k`` calibration examples at evenly spaced ranks of their labels."""
    if k <= 0:
        return []
    order = sorted(range(len(calibration)), key=lambda i: (calibration[i].score, i))
    positions = np.linspace(0, len(order) - 1, k).round().astype(int)
    return [order[p] for p in dict.fromkeys(positions.tolist())]


def _example_block(examples: list[Example], label_range: tuple[float, float]) -> str:
    lo, hi = label_range
    lines = [
        f"Here are answers with the scores a person gave them, from {lo:g} (worst) to {hi:g} (best).\n"
    ]
    for e in examples:
        lines.append(f"Question: {e.question}")
        if e.reference is not None:
            lines.append(f"Reference answer: {e.reference}")
        lines.append(f"Answer: {e.candidate}\nScore: {e.score:g}\n")
    return "\n".join(lines) + "\n"


def infer_task_and_criteria(
    judge: Judge, examples: list[Example], label_range: tuple[float, float]
) -> tuple[str, str]:
    """Active-Critic's first step: the judge model states the task, then the criteria."""
    block = _example_block(examples, label_range)
    task = judge.generate(
        block + "In one sentence, what task were these answers written for?\nTask:",
        max_tokens=48,
    )
    criteria = judge.generate(
        block + f"Task: {task}\nIn one or two sentences, what makes an answer score high or "
        "low here?\nCriteria:",
        max_tokens=64,
    )
    return task, criteria


@dataclass
class Candidate:
    """One candidate scoring prompt of the grid and its agreement on the calibration part."""

    name: str
    spec: JudgeSpec
    calibration: dict[str, float]


def _spec(
    criteria: str,
    task: str,
    wording: str,
    shots: list[dict[str, Any]],
    scale: int,
) -> JudgeSpec:
    return JudgeSpec(
        header=WORDINGS[wording]["header"],
        item=WORDINGS[wording]["item"],
        reference_line=_REFERENCE_LINES[wording],
        criteria=criteria,
        task=task,
        shots=shots,
        scale=scale,
        wording=wording,
    )


def rate(judge: Judge, examples: list[Example]) -> np.ndarray:
    """Shape (n,): the judge's ratings of ``examples`` (NaN where unparsable)."""
    judged = judge.judge_items([(e.question, e.candidate, e.reference) for e in examples])
    return np.array([math.nan if j.score is None else j.score for j in judged], dtype=np.float64)


def _better(a: dict[str, float], b: dict[str, float]) -> bool:
    """Whether agreement ``a`` beats ``b``: higher Spearman, then higher Pearson (NaN lowest)."""

    def key(d: dict[str, float]) -> tuple[float, float]:
        return tuple(  # type: ignore[return-value]
            -math.inf if math.isnan(d[k]) else round(d[k], 9) for k in ("spearman", "pearson")
        )

    return key(a) > key(b)


def calibrate(
    examples: list[Example],
    *,
    backend: str = "hf",
    model: str | None = None,
    backend_options: dict[str, Any] | None = None,
    scale: int = 5,
    label_range: tuple[float, float] | None = None,
    held_back: float = 0.5,
    seed: int = 0,
    shots: int = 2,
    infer_examples: int = 4,
    explanations: int = 2,
    chat: bool | str = "auto",
    device: str = "cpu",
    progress: bool = True,
) -> tuple[JudgeSpec, list[dict[str, Any]]]:
    """Run the Active-Critic calibration (see the module docstring).

    Returns the chosen spec (with its agreement, the grid's and the fixed-criteria prompt's)
    and the report's rows: ``{"prompt", "split", "pearson", "spearman", "kendall", "n",
    "unparsable"}``.
    """
    from metricwise.progress import Progress

    check_scale(scale, "judge-calibrate")
    label_range = label_range or (1.0, float(scale))
    calibration, held = split_examples(examples, held_back, seed, shots)
    with_reference = any(e.reference is not None for e in examples)
    generic = GENERIC_CRITERIA_REFERENCE if with_reference else GENERIC_CRITERIA
    base = Judge(
        backend=backend,
        model=model,
        scale=scale,
        chat=chat,
        backend_options=backend_options,
        device=device,
        progress=False,
    )
    loaded = base.backend()

    def judge_for(spec: JudgeSpec) -> Judge:
        return Judge(backend=loaded, spec=spec, chat=chat, progress=False)

    shown = calibration[: max(1, infer_examples)]
    task, criteria = infer_task_and_criteria(base, shown, label_range)
    inferred_ok = bool(criteria)
    shot_index = pick_shots(calibration, shots)
    shot_records = [
        {
            "question": calibration[i].question,
            "candidate": calibration[i].candidate,
            "reference": calibration[i].reference,
            "score": to_scale(calibration[i].score, label_range, scale),
        }
        for i in shot_index
    ]
    scored_without_shots = [e for i, e in enumerate(calibration) if i not in set(shot_index)]
    grid: list[tuple[str, JudgeSpec, list[Example]]] = []
    for source, text, task_text in (
        ("inferred", criteria or generic, task),
        ("generic", generic, ""),
    ):
        for wording in ("rate", "grade"):
            for k in sorted({0, len(shot_records)}):
                spec = _spec(text, task_text, wording, shot_records if k else [], scale)
                items = scored_without_shots if k else calibration
                grid.append((f"{source}/{wording}/{k}-shot", spec, items))
    candidates: list[Candidate] = []
    with Progress(
        len(grid), "judge-calibrate: scoring prompts", unit="prompt", enabled=progress
    ) as bar:
        for done, (name, spec, items) in enumerate(grid, start=1):
            ratings = rate(judge_for(spec), items)
            candidates.append(
                Candidate(name, spec, agreement(ratings, np.array([e.score for e in items])))
            )
            bar.update(done)
    best = candidates[0]
    for c in candidates[1:]:
        if _better(c.calibration, best.calibration):
            best = c
    fixed = next(c for c in candidates if c.name == "generic/rate/0-shot")
    held_labels = np.array([e.score for e in held])
    chosen_judge = judge_for(best.spec)
    held_chosen = agreement(rate(chosen_judge, held), held_labels)
    held_fixed = agreement(rate(judge_for(fixed.spec), held), held_labels)

    notes = []
    for e in held[: max(0, explanations)]:
        j = chosen_judge.explain(e.candidate, e.question, e.reference)
        notes.append(
            {
                "question": e.question,
                "candidate": e.candidate,
                "reference": e.reference,
                "label": e.score,
                "score": j.score,
                "explanation": j.explanation,
            }
        )

    spec = best.spec
    spec.model = model
    spec.backend = backend
    spec.label_range = [float(label_range[0]), float(label_range[1])]
    spec.agreement = {
        "chosen": best.name,
        "calibration": best.calibration,
        "held_back": held_chosen,
        "fixed_criteria_held_back": held_fixed,
        "grid": {c.name: c.calibration for c in candidates},
    }
    spec.provenance = {
        "inferred_task": task,
        "inferred_criteria": criteria,
        "inferred_criteria_used": inferred_ok,
        "examples": len(examples),
        "calibration": len(calibration),
        "held_back": len(held),
        "held_back_fraction": held_back,
        "seed": seed,
        "shots": len(shot_records),
        "explanations": notes,
    }
    rows = [{"prompt": c.name, "split": "calibration", **c.calibration} for c in candidates]
    rows.append({"prompt": f"chosen: {best.name}", "split": "held-back", **held_chosen})
    rows.append(
        {"prompt": "fixed criteria: generic/rate/0-shot", "split": "held-back", **held_fixed}
    )
    return spec, rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The agreement rows as a markdown table."""

    def f(x: float) -> str:
        return "n/a" if isinstance(x, float) and math.isnan(x) else f"{x:.3f}"

    lines = [
        "| prompt | split | n | unparsable | Pearson | Spearman | Kendall |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['prompt']} | {r['split']} | {r['n']} | {r['unparsable']} | {f(r['pearson'])} | "
            f"{f(r['spearman'])} | {f(r['kendall'])} |"
        )
    return "\n".join(lines)


# -- the command line ---------------------------------------------------------------------------------
_EPILOG = """\
input: JSONL, one labelled example per line:
  {"question": "...", "candidate": "...", "reference": "..." (optional), "score": 3.5}
with scores on --label_range (default 1..--scale).

examples:
  metricwise judge-calibrate --examples labelled.jsonl --model smollm2-135m-instruct --output judge.yaml
  metricwise judge-calibrate --examples sts.jsonl --label_range 0,5 --held_back 0.5 --shots 2 --output judge.yaml
  metricwise predict --metric judge --metric_args spec=judge.yaml -n 8 --input prompts.jsonl

The spec holds the chosen prompt (criteria, wording, shots), the scale, the model and backend,
and the agreement (Pearson, Spearman, Kendall) on the calibration and held-back examples,
beside the fixed-criteria prompt's on the same held-back examples.
"""


def add_judge_calibrate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``judge-calibrate`` subcommand; building it imports nothing heavy."""
    from metricwise.cli import HelpFormatter

    p = subparsers.add_parser(
        "judge-calibrate",
        help="calibrate the judge utility on labelled examples (Active-Critic) and write a judge spec",
        description="From a few labelled examples, let the judge model infer the task and its criteria, "
        "choose the scoring prompt (criteria, wording, shots) that agrees best with the labels, and write "
        "a judge spec (YAML) that `--metric judge --metric_args spec=FILE` loads.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--examples", required=True, help="JSONL file of labelled examples")
    p.add_argument("--output", "-o", default="judge.yaml", help="where to write the judge spec")
    p.add_argument("--backend", default="hf", help="hf, llamacpp or openai")
    p.add_argument(
        "--model",
        default=None,
        help="the judge model (default: the backend's default model; smollm2-135m-instruct is the "
        "instruction-tuned one that ships offline)",
    )
    p.add_argument(
        "--model_args",
        action="append",
        default=[],
        metavar="K=V[,K=V]",
        help="backend options, e.g. base_url=http://127.0.0.1:8080 or n_threads=1",
    )
    p.add_argument("--scale", type=int, default=5, help="K: the judge rates 1..K (2 to 9)")
    p.add_argument(
        "--label_range", default=None, metavar="LO,HI", help="the labels' scale (default: 1,K)"
    )
    p.add_argument("--held_back", type=float, default=0.5, help="fraction of examples held back")
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument("--shots", type=int, default=2, help="shots of the few-shot prompts (0: none)")
    p.add_argument(
        "--infer_examples",
        type=int,
        default=4,
        help="examples shown to infer the task and criteria",
    )
    p.add_argument(
        "--explanations", type=int, default=2, help="held-back judgements explained in the report"
    )
    p.add_argument("--device", default="cpu", help="torch device of the hf backend")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_judge_calibrate)
    return p


def run_judge_calibrate(args: argparse.Namespace) -> int:
    import json

    from metricwise.cli import _parse_floats, _parse_key_values

    scale = check_scale(args.scale, "judge-calibrate")
    values = _parse_floats(args.label_range, "--label_range", 2)
    label_range = (1.0, float(scale)) if values is None else (values[0], values[1])
    if not label_range[0] < label_range[1]:
        raise InvalidParameterError(
            f"The '--label_range' option must be LO,HI with LO < HI. Got {args.label_range!r} instead."
        )
    if args.shots < 0 or args.infer_examples < 1 or args.explanations < 0:
        raise InvalidParameterError(
            "The '--shots' and '--explanations' options must be >= 0 and '--infer_examples' >= 1. "
            f"Got {args.shots}, {args.explanations} and {args.infer_examples} instead."
        )
    options = _parse_key_values(args.model_args, "--model_args")
    if args.backend not in ("hf", "llamacpp", "openai"):
        raise InvalidParameterError(
            f"The '--backend' option must be one of hf, llamacpp, openai. Got {args.backend!r} instead."
        )
    output = Path(args.output)
    if not output.parent.exists():
        raise InvalidParameterError(
            f"The '--output' option must be in an existing directory. Got {args.output!r} instead."
        )
    examples = read_examples(args.examples, label_range)
    split_examples(
        examples, args.held_back, args.seed, args.shots
    )  # checked before any model loads
    spec, rows = calibrate(
        examples,
        backend=args.backend,
        model=args.model,
        backend_options=options,
        scale=scale,
        label_range=label_range,
        held_back=args.held_back,
        seed=args.seed,
        shots=args.shots,
        infer_examples=args.infer_examples,
        explanations=args.explanations,
        device=args.device,
        progress=not args.quiet,
    )
    spec.to_yaml(output)
    print(f"inferred task: {spec.provenance['inferred_task']!r}")
    print(f"inferred criteria: {spec.provenance['inferred_criteria']!r}")
    print(format_table(rows))
    for note in spec.provenance["explanations"]:
        print(
            f"\nlabel {note['label']:g}, judge {note['score'] if note['score'] is None else round(note['score'], 2)}: "
            f"{json.dumps(note['candidate'])[:80]}\n  explanation: {note['explanation']!r}"
        )
    print(f"\nwrote {output} (chosen prompt: {spec.agreement['chosen']})", file=sys.stderr)
    return 0
