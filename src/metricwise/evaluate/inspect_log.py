"""Inspect AI logs of an evaluation run, for ``inspect view`` (``eval --inspect_log``).

One log per run (task, temperature, decoding), built with inspect_ai's own types and written
by its :func:`inspect_ai.log.write_eval_log`, never by hand: one Inspect sample per item, with
the prompt as input, the references as target, the N candidates as the output's choices
(text and finish reason; log p and log q in each message's metadata) and one score per
decoder: its value for every metric of the task, the decision as the answer, and an
explanation giving the rule, the expected loss or utility, the top of the support, n_valid of
n_total and why the rest were left out. The run's settings are the eval spec's metadata;
every decoder's scores with their intervals and paired differences are the results.

Needs ``pip install 'metricwise[inspect]'`` (inspect-ai, pinned).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metricwise.errors import MissingDependencyError
from metricwise.io import json_safe

#: Inspect's stop reasons for the finish reasons of metricwise's candidates.
STOP_REASONS = {"stop": "stop", "length": "max_tokens", "max_tokens": "max_tokens"}


def _require_inspect() -> None:
    try:
        import inspect_ai  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "Inspect logs need inspect-ai: pip install 'metricwise[inspect]'."
        ) from None


def explanation(label: str, decision: dict[str, Any] | None, prediction: Any) -> str:
    """What a decoder decided and why, in one paragraph of the viewer.

    For a Bayes rule: ``rule mean for squared_error; expected loss 0.52; support: 3 (0.50, 4),
    4 (0.25, 2); 7 of 8 samples valid, left out: unparsable 1``. For a decoder without a
    decision (greedy, first, the prior): its answer alone.
    """
    if not decision:
        return f"{label}: answer {prediction!r}"
    parts = [f"rule {decision['rule']} for {decision['metric']}"]
    # A failed decision has no answer, so no expected loss (NaN in the record): not shown.
    for key in ("expected_loss", "expected_utility"):
        value = decision.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            parts.append(f"{key.replace('_', ' ')} {value:.4g}")
            break
    support = decision.get("support") or []
    if support:
        parts.append(
            "support: "
            + ", ".join(f"{value!r} ({weight:.2f}, {count})" for value, weight, count in support)
        )
    valid = f"{decision['n_valid']} of {decision['n_total']} samples valid"
    excluded = decision.get("excluded") or {}
    if excluded:
        valid += ", left out: " + ", ".join(f"{reason} {n}" for reason, n in excluded.items())
    parts.append(valid)
    if decision.get("failure"):
        parts.append(f"no decision: {decision['failure']}")
    return "; ".join(parts)


def _eval_log(results: dict[str, Any], run: dict[str, Any], records: Sequence[Any]) -> Any:
    from inspect_ai.log import (
        EvalConfig,
        EvalDataset,
        EvalLog,
        EvalMetric,
        EvalResults,
        EvalSample,
        EvalScore,
        EvalSpec,
    )
    from inspect_ai.model import (
        ChatCompletionChoice,
        ChatMessageAssistant,
        ChatMessageUser,
        ModelOutput,
    )
    from inspect_ai.scorer import Score

    config = results.get("config") or {}
    model = str(config.get("model_signature") or config.get("model") or "unknown")
    signatures = {(r["decoder"], r["metric"]): r.get("signature") for r in run["scores"]}
    samples = []
    for record in records:
        choices = [
            ChatCompletionChoice(
                message=ChatMessageAssistant(
                    content=c["text"],
                    model=model,
                    metadata={
                        "logp": c.get("logp"),
                        "logq": c.get("logq"),
                        "n_tokens": c.get("n_tokens"),
                    },
                ),
                stop_reason=STOP_REASONS.get(str(c.get("finish_reason")), "unknown"),  # type: ignore[arg-type]
            )
            for c in record.candidates
        ]
        scores = {}
        for label, by_metric in record.scores.items():
            decision = record.decisions.get(label)
            prediction = record.predictions.get(label)
            metadata: dict[str, Any] = {
                "signature": {m: signatures.get((label, m)) for m in by_metric},
            }
            if decision:
                metadata["decision"] = decision
            if label in record.samples_used:
                metadata["samples_used"] = record.samples_used[label]
            scores[label] = Score(
                value={m: float(v) for m, v in by_metric.items()},
                answer=None if prediction is None else str(prediction),
                explanation=explanation(label, decision, prediction),
                metadata=json_safe(metadata),
            )
        samples.append(
            EvalSample(
                id=record.id,
                epoch=1,
                input=record.prompt,
                target=[str(r) for r in record.references],
                messages=[
                    ChatMessageUser(content=record.prompt),
                    ChatMessageAssistant(
                        content=record.greedy, model=model, metadata={"greedy": True}
                    ),
                ],
                output=ModelOutput(model=model, choices=choices),
                scores=scores,
                metadata={"greedy": record.greedy, "n_candidates": len(record.candidates)},
            )
        )
    eval_scores = []
    for label in dict.fromkeys(r["decoder"] for r in run["scores"]):
        metrics: dict[str, Any] = {}
        for row in (r for r in run["scores"] if r["decoder"] == label):
            m = row["metric"]
            metrics[m] = EvalMetric(name=m, value=float(row["value"]))
            metrics[f"{m}_ci_low"] = EvalMetric(name=f"{m}_ci_low", value=float(row["ci"][0]))
            metrics[f"{m}_ci_high"] = EvalMetric(name=f"{m}_ci_high", value=float(row["ci"][1]))
            for key in ("vs_greedy", "vs_prior"):
                if row.get(key):
                    metrics[f"{m}_{key}"] = EvalMetric(
                        name=f"{m}_{key}",
                        value=float(row[key]["difference"]),
                        metadata={"ci": row[key]["ci"], "p_value": row[key].get("p_value")},
                    )
        eval_scores.append(
            EvalScore(name=label, scorer=label, scored_samples=len(records), metrics=metrics)
        )
    task = str(run["task"]) + ("_global" if run.get("decoding") == "global" else "")
    return EvalLog(
        status="success",
        eval=EvalSpec(
            created=str(results.get("created") or ""),
            task=task,
            task_version=int(run["version"]) if str(run.get("version", "")).isdigit() else 0,
            dataset=EvalDataset(name=str(run["task"]), samples=len(records)),
            model=model,
            config=EvalConfig(limit=config.get("limit")),
            metadata=json_safe(
                {
                    "metricwise_version": results.get("metricwise_version"),
                    "settings": config,
                    "temperature": run.get("temperature"),
                    "n": run.get("n"),
                    "decoding": run.get("decoding", "local"),
                }
            ),
        ),
        results=EvalResults(
            total_samples=len(records),
            completed_samples=len(records),
            scores=eval_scores,
            metadata=json_safe({"scores": run["scores"], "corpus": run.get("corpus", [])}),
        ),
        samples=samples,
    )


def write_inspect_logs(
    results: dict[str, Any], records: dict[str, Sequence[Any]], out: Path
) -> list[Path]:
    """One Inspect log (``.eval``) per run under ``out``, named as ``samples_<name>.jsonl``
    is: ``records`` maps that name to the run's item records, in the order of ``results``'
    runs. Returns the paths written."""
    _require_inspect()
    from inspect_ai.log import write_eval_log

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for run, (name, run_records) in zip(results["runs"], records.items(), strict=True):
        path = out / f"{name}.eval"
        write_eval_log(_eval_log(results, run, run_records), str(path))
        written.append(path)
    return written
