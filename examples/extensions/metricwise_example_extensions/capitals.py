"""A task: one module (CONTRIBUTING.md, "Add a task").

Its data file is ``capitals/capitals.jsonl`` under the data directory (``--data_dir`` or
``$METRICWISE_DATA_DIR``), one ``{"q": "France", "a": "Paris"}`` per line; every 10th row is
held apart for few-shot examples.
"""

from metricwise.tasks.base import Item, Task
from metricwise.tasks.readers import read_jsonl_records
from metricwise.tasks.registry import builtin_task
from metricwise.tasks.splits import holdout_loader


def _parse(path):  # the data file -> records (dicts); errors name the file and line
    return [{"q": r["q"], "a": r["a"]} for r in read_jsonl_records(path, ("q", "a"))]


def _item(record, item_id):  # a record -> an Item: id, template fields, references, target
    return Item(item_id, {"question": record["q"]}, (record["a"],), record["a"])


CAPITALS = builtin_task(
    Task(
        name="capitals",
        description="Capitals of countries (capitals/capitals.jsonl; every 10th row held apart for shots).",
        answer_type="text",
        metrics=("exact_match", "token_f1"),  # the first one picks the decision rule
        extractor="first_line",
        template="What is the capital of {question}?",  # the task adds the answer prefix and shots
        loader=holdout_loader("capitals", "capitals/capitals.jsonl", _parse, None, None, _item),
    )
)
