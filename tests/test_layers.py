"""Layers: diagnostics, report and plots never import the models (nor does the numerical core under them);
the mixed-model site test exists once."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.exceptions import FormulaError, InputError

PACKAGE = Path(fh.__file__).resolve().parent
REF = Path(__file__).resolve().parent / "reference" / "inputs" / "small_long"


def _model_imports(path: Path) -> list[str]:
    """Imports of ``featharm.models`` in a module (absolute or relative, at any depth, also inside functions)."""
    package = path.relative_to(PACKAGE.parent).parts[:-1]  # ("featharm", "report") for featharm/report/_build.py
    return _scan(path.read_text(encoding="utf-8"), package, str(path.relative_to(PACKAGE.parent)))


def _scan(source: str, package: tuple, where: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, where)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # resolve "..models" / "from .. import models" against the module's package
                parts = list(package[: len(package) - node.level + 1])
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            if name == "featharm.models" or name.startswith("featharm.models."):
                found.append(f"{where}:{node.lineno}: {name}")
                break
    return found


@pytest.mark.parametrize("part", ["diagnostics", "report", "plots", "mixed.py", "formula.py", "design.py",
                                  "_validation.py"])
def test_no_model_imports(part):
    paths = sorted((PACKAGE / part).rglob("*.py")) if (PACKAGE / part).is_dir() else [PACKAGE / part]
    assert paths
    bad = [hit for p in paths for hit in _model_imports(p)]
    assert bad == []


def test_the_scan_finds_model_imports():
    """The scanner itself: every spelling of an import of featharm.models is found, and only those."""
    source = ("def f():\n    from ..models import ComBat\n    from .. import models\n"
              "import featharm.models.combat\nfrom featharm import models as m\nfrom ...models import x\n"
              "from .models import y\nfrom .. import mixed\nimport featharm.mixed\n")
    hits = _scan(source, ("featharm", "report"), "probe")
    assert sorted(h.split(": ")[1] for h in hits) == ["featharm.models"] * 3 + ["featharm.models.combat"]


def test_batch_lrt_and_the_diagnostics_share_one_lrt(monkeypatch):
    X = pd.read_csv(REF / "features.csv")
    C = pd.read_csv(REF / "covars.csv")
    from featharm.models import longitudinal

    def refuse(*a, **k):
        raise AssertionError("batch_lrt built a LongComBat")

    monkeypatch.setattr(longitudinal.LongComBat, "__init__", refuse)
    lrt = fh.mixed.batch_lrt(X, C, batch="site", subject="subject_id", formula="age + sex + time")
    t = fh.diagnostics.test_site_effects(X, C, batch="site", formula="age + sex + time", model="lmm",
                                         random="subject_id", tests="lmm_lrt")
    np.testing.assert_array_equal(lrt["statistic"].to_numpy(), t["statistic"].to_numpy())
    np.testing.assert_array_equal(lrt["p_unc"].to_numpy(), t["p_unc"].to_numpy())
    # the arrays-only function behind both
    from featharm.design import CovariateDesign, batch_indicators

    codes = pd.factorize(C.site, sort=True)[0]
    _, Xc = CovariateDesign.fit("age + sex + time", C, exclude=("site",))
    chi2, df, _ = fh.mixed.site_lrt(X.to_numpy(float), batch_indicators(codes, 4), Xc,
                                    pd.factorize(C.subject_id.astype(str), sort=True)[0])
    assert df == 3
    np.testing.assert_array_equal(chi2, lrt["statistic"].to_numpy())


def test_batch_lrt_checks_its_parameters():
    X = pd.read_csv(REF / "features.csv").iloc[:, :2]
    C = pd.read_csv(REF / "covars.csv")
    with pytest.raises(InputError, match="random_slope=True needs the time column"):
        fh.mixed.batch_lrt(X, C, batch="site", subject="subject_id", random_slope=True)
    with pytest.raises(FormulaError, match="uses 'subject_id'"):
        fh.mixed.batch_lrt(X, C, batch="site", subject="subject_id", formula="age + subject_id")
    with pytest.raises(fh.exceptions.ColumnNotFoundError, match="subject column 'id'"):
        fh.mixed.batch_lrt(X, C, batch="site", subject="id")
    with pytest.raises(InputError, match="needs `covariates`"):
        fh.mixed.batch_lrt(X, None)


def test_report_reads_smooth_terms_with_the_formula_grammar():
    from types import SimpleNamespace

    from featharm.report._protocol import model_formula

    assert model_formula(SimpleNamespace(formula="sex + s(age)")) == "sex + age"
    assert model_formula(SimpleNamespace(formula="s(age) + sex", smooth=["bmi"])) == "sex + age + bmi"
    assert model_formula(SimpleNamespace(formula=None, smooth="age")) == "age"
    assert model_formula(SimpleNamespace(formula="sex", smooth=["age"], design_=None)) == "sex + age"
    assert model_formula(SimpleNamespace(formula=None, design_=SimpleNamespace(formula="age + sex"))) == "age + sex"
    assert model_formula(SimpleNamespace()) is None
