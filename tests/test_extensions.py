"""Extensions: CONTRIBUTING.md's four recipes, installed as a plugin package, work through
decide, sample and eval; and the one discovery rule behind every registry.

``examples/extensions`` is a real package (a metric, a backend, a task, a decoder, each the
recipe's code) that declares them as entry points. The test installs it with pip into a
folder of its own, then runs metricwise in a fresh interpreter that sees that folder, as a
user who installed the plugin would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from metricwise.errors import InvalidParameterError, UnknownNameError
from metricwise.registry import Registry

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN = REPO_ROOT / "examples" / "extensions"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The example plugin package installed with pip into a folder of its own."""
    import shutil

    target = tmp_path_factory.mktemp("site")
    # setuptools writes build/ and *.egg-info beside the sources: build a copy, not the repository.
    source = tmp_path_factory.mktemp("source") / "extensions"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        check=True,
        timeout=300,
    )  # fmt: skip
    assert list(target.glob("metricwise_example_extensions-*.dist-info"))
    return target


def run_with_plugin(site: Path, code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO_ROOT / "src")]),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_recipes_installed_as_a_plugin_work_through_decide_sample_and_eval(
    plugin_site, tmp_path
):
    data = tmp_path / "data" / "capitals"
    data.mkdir(parents=True)
    capitals = [
        ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Peru", "Lima"),
        ("Spain", "Madrid"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Chile", "Santiago"),
        ("Norway", "Oslo"), ("Cuba", "Havana"), ("Iran", "Tehran"), ("Mali", "Bamako"),
    ]  # fmt: skip
    (data / "capitals.jsonl").write_text(
        "".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in capitals)
    )
    (tmp_path / "prompts.jsonl").write_text('{"id": 1, "prompt": "Roll"}\n')
    done = run_with_plugin(
        plugin_site,
        """
        import json, sys
        from metricwise import decide
        from metricwise.cli import main

        # The metric: a loss, so MBR keeps the answer of least expected length gap.
        print("decide", json.dumps(decide(["ab", "abcd", "abcdef"], "length_gap").output))
        assert main(["metrics"]) == 0
        assert main(["tasks"]) == 0
        # The backend, through the store.
        assert main(["sample", "--backend", "dice", "-n", "6", "--input", "prompts.jsonl",
                     "--store", "s.sqlite", "--output", "samples.jsonl", "-q"]) == 0
        # The task (its data under --data_dir) and the decoder, in an eval.
        assert main(["eval", "--backend", "dice", "--tasks", "capitals", "--data_dir", "data",
                     "--limit", "4", "-n", "4", "--num_fewshot", "1", "--store", "s.sqlite",
                     "--output_path", "out", "--no_plots", "-q"]) == 0
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert 'decide "abcd"' in done.stdout
    assert "length_gap" in done.stdout and "lower" in done.stdout  # metricwise metrics
    assert "capitals" in done.stdout  # metricwise tasks
    faces = [c["text"] for c in json.loads((tmp_path / "samples.jsonl").read_text())["candidates"]]
    assert len(faces) == 6 and set(faces) <= set("123456")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (run,) = results["runs"]
    assert run["task"] == "capitals" and run["n_items"] == 4
    assert "middle_sample" in {row["decoder"] for row in run["scores"]}
    assert "Traceback" not in done.stderr


def test_without_the_plugin_its_names_are_unknown(tmp_path):
    done = run_with_plugin(
        tmp_path,  # an empty folder: the plugin is not installed
        """
        from metricwise import metrics
        from metricwise.backends import backend_names
        assert "length_gap" not in metrics.names() and "dice" not in backend_names()
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr


def _package(root: Path, name: str, modules: dict[str, str]) -> None:
    folder = root / name
    folder.mkdir()
    for module, code in modules.items():
        (folder / f"{module}.py").write_text(textwrap.dedent(code))


def test_every_module_of_the_package_is_found_on_first_use(tmp_path, monkeypatch):
    """The one discovery rule: a module of its own in the kind's package is found (a decoder
    in a module of its own used not to be), one whose name starts with _ is not."""
    _package(
        tmp_path,
        "fake_kind",
        {
            "__init__": "from metricwise.registry import Registry\nTHINGS = Registry('decoder', 'fake_kind', group='fake.none')\n",
            "alpha": "from fake_kind import THINGS\nTHINGS.add('alpha', 1)\n",
            "beta": "from fake_kind import THINGS\nTHINGS.add('beta', 2)\n",
            "_private": "from fake_kind import THINGS\nTHINGS.add('hidden', 3)\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from fake_kind import THINGS  # type: ignore[import-not-found]

    assert THINGS.names() == ["alpha", "beta"] and THINGS.get("beta") == 2
    with pytest.raises(UnknownNameError, match=r"Unknown decoder 'alfa'\. Did you mean 'alpha'"):
        THINGS.get("alfa")
    with pytest.raises(
        InvalidParameterError, match="A decoder named 'alpha' is already registered"
    ):
        THINGS.add("alpha", 4)


class _EntryPoint:
    def __init__(self, name: str, value: str, load):
        self.name, self.value, self.load = name, value, load


def test_a_plugin_that_fails_to_load_is_named_and_the_others_still_load(monkeypatch):
    import importlib.metadata

    def broken():
        raise ImportError("No module named 'missing_dependency'")

    points = [
        _EntryPoint("broken", "bad_plugin:Thing", broken),
        _EntryPoint("good", "good_plugin:Thing", lambda: "the good one"),
    ]
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group: points if group == "g" else []
    )
    registry: Registry[str] = Registry("metric", "metricwise.registry", group="g")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert registry.names() == ["good"]
    (warning,) = caught
    assert "The metric plugin 'broken' (bad_plugin:Thing" in str(warning.message)
    assert "missing_dependency" in str(warning.message)


def test_contributings_recipes_are_the_files_they_name():
    """Each recipe block in CONTRIBUTING.md opens with the path of the file it shows, and is
    that file (so the recipes a contributor copies are the code this module runs)."""
    import re

    text = (REPO_ROOT / "CONTRIBUTING.md").read_text()
    blocks = re.findall(r"```python\n# (examples/extensions/\S+\.py)\n(.*?)```", text, re.DOTALL)
    assert {Path(path).stem for path, _ in blocks} == {
        "length_gap",
        "capitals",
        "middle_sample",
        "dice",
    }
    for path, code in blocks:
        assert code == (REPO_ROOT / path).read_text(), (
            f"CONTRIBUTING.md's block differs from {path}"
        )
