"""Short-answer question answering: TriviaQA, Natural Questions (open) and SQuAD v1.1.

========== ========================================== ==== ==================================================
task       evaluated items (file)                     rows few-shot pool
========== ========================================== ==== ==================================================
triviaqa   triviaqa/triviaqa_sm_sub.jsonl (3000)      2700 rows 9, 19, 29, ... (300)
nq_open    nq_open/NQ-open.dev.jsonl (3610)           3249 rows 9, 19, 29, ... (361)
squad      squad/dev-v1.1.json (10570)                9947 articles 9, 19, 29, 39 (623 questions)
========== ========================================== ==== ==================================================

Text answers, scored against every accepted answer (aliases); one file each, of which every
tenth row (SQuAD: every tenth article, so that no passage is both shot and evaluated) is held
apart for shots (see :func:`~metricwise.tasks.splits.holdout_loader`). SQuAD items keep the
question id as their id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from metricwise.errors import InvalidParameterError
from metricwise.tasks.base import Item, Task
from metricwise.tasks.readers import HubSource, Record, line_of, read_json, read_jsonl_records
from metricwise.tasks.registry import builtin_task
from metricwise.tasks.splits import holdout_loader


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    """The distinct non-empty answers in order (alias lists repeat the answer)."""
    return tuple(dict.fromkeys(v for v in values if v))


# -- TriviaQA -----------------------------------------------------------------------------------
_TRIVIA_CONTEXT = re.compile(r"\s*Question:\s*(.*?)\s*Answer:\s*", re.DOTALL)


def _parse_triviaqa(path: Path) -> list[Record]:
    records = []
    for obj in read_jsonl_records(path, ("context", "answer", "aliases")):
        where = line_of(path, obj["_line"])
        if not isinstance(obj["aliases"], list) or not all(
            isinstance(a, str) for a in obj["aliases"]
        ):
            raise InvalidParameterError(
                f"{where}: 'aliases' must be a list of strings. Got {obj['aliases']!r} instead."
            )
        m = _TRIVIA_CONTEXT.fullmatch(str(obj["context"]))
        question = m.group(1) if m else str(obj["context"]).strip()
        answer = str(obj["answer"]).strip()
        if not question or not answer:
            raise InvalidParameterError(f"{where}: the question and the answer must not be empty.")
        records.append(
            {"question": question, "answer": answer, "aliases": [a.strip() for a in obj["aliases"]]}
        )
    return records


def _triviaqa_hub(row: Mapping[str, Any]) -> Record:
    answer = row["answer"]
    return {
        "question": str(row["question"]).strip(),
        "answer": str(answer["value"]).strip(),
        "aliases": list(answer["aliases"]),
    }


def _triviaqa_item(r: Record, item_id: str) -> Item:
    return Item(
        item_id, {"question": r["question"]}, _unique([r["answer"], *r["aliases"]]), r["answer"]
    )


builtin_task(
    Task(
        name="triviaqa",
        description="TriviaQA (3000-question subsample): short answers, scored against all aliases (every 10th row held apart for shots).",
        answer_type="text",
        metrics=("exact_match", "token_f1"),
        extractor="first_line",
        instruction="Answer each trivia question with a short answer.",
        template="Question: {question}",
        max_tokens=24,
        loader=holdout_loader(
            "triviaqa",
            "triviaqa/triviaqa_sm_sub.jsonl",
            _parse_triviaqa,
            HubSource(
                "mandarjoshi/trivia_qa",
                (("rc.nocontext", "validation"),),
                "the full validation split (17,944 questions), not the 3000-question subsample",
            ),
            _triviaqa_hub,
            _triviaqa_item,
        ),
    )
)


# -- NQ-open ------------------------------------------------------------------------------------
def _parse_nq(path: Path) -> list[Record]:
    records = []
    for obj in read_jsonl_records(path, ("question", "answer")):
        answers = obj["answer"]
        if (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, str) and a.strip() for a in answers)
        ):
            raise InvalidParameterError(
                f"{line_of(path, obj['_line'])}: 'answer' must be a non-empty list of strings. Got {answers!r} instead."
            )
        records.append(
            {"question": str(obj["question"]).strip(), "answers": [a.strip() for a in answers]}
        )
    return records


def _nq_hub(row: Mapping[str, Any]) -> Record:
    answers = [str(a).strip() for a in row["answer"]]
    if not answers:
        raise ValueError("no answers")
    return {"question": str(row["question"]).strip(), "answers": answers}


def _nq_item(r: Record, item_id: str) -> Item:
    question = r["question"].rstrip("?").rstrip()
    return Item(item_id, {"question": question}, _unique(r["answers"]), r["answers"][0])


builtin_task(
    Task(
        name="nq_open",
        description="Natural Questions (open), dev: short answers against all given answers (every 10th row held apart for shots).",
        answer_type="text",
        metrics=("exact_match", "token_f1"),
        extractor="first_line",
        instruction="Answer each question with a short answer.",
        template="Question: {question}?",
        max_tokens=24,
        loader=holdout_loader(
            "nq_open",
            "nq_open/NQ-open.dev.jsonl",
            _parse_nq,
            HubSource("google-research-datasets/nq_open", ((None, "validation"),)),
            _nq_hub,
            _nq_item,
        ),
    )
)


# -- SQuAD --------------------------------------------------------------------------------------
def _parse_squad(path: Path) -> list[Record]:
    data = read_json(path)
    if data is None:
        return []
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise InvalidParameterError(
            f"The data file {path.absolute()} must be SQuAD JSON: an object with a 'data' list of articles."
        )
    records = []
    for a, article in enumerate(data["data"]):
        try:
            title = str(article.get("title", f"article {a}"))
            for paragraph in article["paragraphs"]:
                context = str(paragraph["context"])
                for qa in paragraph["qas"]:
                    answers = [str(x["text"]).strip() for x in qa["answers"]]
                    if not answers:
                        raise ValueError(f"question {qa.get('id')!r} has no answers")
                    records.append(
                        {
                            "id": str(qa["id"]),
                            "title": title,
                            "context": context,
                            "question": str(qa["question"]).strip(),
                            "answers": answers,
                        }
                    )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise InvalidParameterError(
                f"Article {a} of {path.absolute()} is not in the SQuAD v1.1 format ({type(exc).__name__}: {exc})."
            ) from None
    return records


def _squad_hub(row: Mapping[str, Any]) -> Record:
    answers = [str(t).strip() for t in row["answers"]["text"]]
    if not answers:
        raise ValueError("no answers")
    return {
        "id": str(row["id"]),
        "title": str(row["title"]),
        "context": str(row["context"]),
        "question": str(row["question"]).strip(),
        "answers": answers,
    }


def _squad_item(r: Record, item_id: str) -> Item:
    fields = {
        "title": r["title"].replace("_", " "),
        "context": r["context"],
        "question": r["question"],
    }
    return Item(r["id"], fields, _unique(r["answers"]), r["answers"][0])


def _article_groups(records: list[Record]) -> list[int]:
    """Each question's article number, so that an article's questions are held apart together."""
    order: dict[str, int] = {}
    return [order.setdefault(r["title"], len(order)) for r in records]


builtin_task(
    Task(
        name="squad",
        description="SQuAD v1.1 dev: extractive answers from the passage (every 10th article held apart for shots).",
        answer_type="text",
        metrics=("token_f1", "exact_match"),
        extractor="first_line",
        instruction="Answer each question with a short span copied from its passage.",
        template="Title: {title}\nPassage: {context}\nQuestion: {question}",
        max_tokens=32,
        similarity_fields=("question",),
        loader=holdout_loader(
            "squad",
            "squad/dev-v1.1.json",
            _parse_squad,
            HubSource("rajpurkar/squad", ((None, "validation"),)),
            _squad_hub,
            _squad_item,
            group=_article_groups,
        ),
    )
)
