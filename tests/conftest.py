"""Project-wide test configuration.

Some tests compare against reference packages (neuroCombat, neuroHarmonize) or need a headless browser
(Chromium); on a developer's machine without them those tests are skipped with a reason. CI sets
``FEATHARM_REQUIRE_REFERENCES=1``, which turns such a skip into a failure, so a green CI run means every
parity and browser check really ran.
"""

from __future__ import annotations

import os

import pytest

_REFERENCE_WORDS = ("neurocombat", "neuroharmonize", "chromium", "pyarrow", "openpyxl", "statsmodels")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and os.environ.get("FEATHARM_REQUIRE_REFERENCES")):
        return
    if hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
    if any(w in reason.lower() for w in _REFERENCE_WORDS):
        report.outcome = "failed"
        report.longrepr = (f"FEATHARM_REQUIRE_REFERENCES is set but this test was skipped: {reason}. "
                           "Install what it needs (see .ci/run).")
