"""Shared fixtures. Real benchmark files come from a data directory: METRICWISE_DATA_DIR, or the
workplace's ../shared/data beside the repository. Tests that need it skip, saying where they
looked, when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_data_dir() -> Path | None:
    configured = os.environ.get("METRICWISE_DATA_DIR")
    candidate = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = find_data_dir()
    if found is None:
        pytest.skip(
            "benchmark data not found: set METRICWISE_DATA_DIR or place it at "
            f"{REPO_ROOT.parent / 'shared' / 'data'}"
        )
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    """With METRICWISE_FAIL_ON_SKIP=1 a skipped test fails: CI's llama.cpp stage builds what those
    tests need, so a skip there means the build did not give it."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and os.environ.get("METRICWISE_FAIL_ON_SKIP") == "1"
        and not hasattr(report, "wasxfail")
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, and METRICWISE_FAIL_ON_SKIP=1 forbids it: {reason}"
