"""Project-wide test configuration.

Some tests compare against reference packages (neuroCombat, neuroHarmonize) or need a headless browser
(Chromium); on a developer's machine without them those tests are skipped with a reason. CI sets
``FEATHARM_REQUIRE_REFERENCES=1``, which turns such a skip into a failure, so a green CI run means every
parity and browser check really ran.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The tests mirror the package (models/, diagnostics/, io/, cli/, report/, reference/ for the parity tests
# against the R and Python references, whose data live in reference/ too). Test modules share a few
# loaders by module name (``from test_parity_r import load_small_cs``), so every test folder is importable
# whichever of them pytest collects first.
_TESTS = Path(__file__).resolve().parent
for _folder in sorted(_TESTS.iterdir()):
    if _folder.is_dir() and next(_folder.glob("test_*.py"), None) and not (_folder / "__init__.py").exists():
        if str(_folder) not in sys.path:
            sys.path.insert(0, str(_folder))

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
