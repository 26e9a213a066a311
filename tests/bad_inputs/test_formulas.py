"""Battery: formulas that would run code, and covariates coded differently at apply than at fit.

A model file's formula is never evaluated: the design is rebuilt from its stored data, and the text must
be one featharm's grammar reads and must agree with that data. A formula typed on the command line is
parsed by the same grammar before anything else happens.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from .conftest import expect_refusal

V01 = Path(__file__).parents[1] / "data" / "models_v01"


def _rewrite(src: Path, dst: Path, change) -> Path:
    with zipfile.ZipFile(src) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        members = {n: zf.read(n) for n in zf.namelist()}
    change(manifest)
    with zipfile.ZipFile(dst, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, json.dumps(manifest) if n == "manifest.json" else b)
    return dst


def _inject_text(marker):
    def change(m):
        d = m["state"]["design"]
        d["formula"] = (d["formula"] or "1") + f' + I(age*0 + __import__("os").system("touch {marker}"))'
    return change


def _inject_node(marker):
    def change(m):
        spec = m["state"]["design"]["spec"]
        node = ["call", "__import__", [["col", "age"]], {}]
        spec["factors"].append({"name": "age_evil", "kind": "numerical", "node": node})
        spec["blocks"].append([["age_evil", False]])
        m["state"]["design"]["columns"].append("age_evil")
    return change


@pytest.mark.parametrize("inject", [_inject_text, _inject_node], ids=["formula-text", "design-node"])
def test_model_file_with_injected_code_is_refused(capsys, tmp_path, family_model, inject):
    family, model, data = family_model
    marker = tmp_path / "pwned"
    bad = _rewrite(model, tmp_path / "bad.fhm", inject(marker))
    out = tmp_path / "out.csv"
    expect_refusal(capsys, ["apply", bad, data, "--out", out, "--quiet"],
                   needles=["bad.fhm"], inputs=[bad, data], outputs=[out])
    assert not marker.exists()


@pytest.mark.parametrize("command", ["apply", "report", "diagnose"])
def test_old_model_file_with_injected_formula_is_refused(capsys, tmp_path, command):
    marker = tmp_path / "pwned"
    bad = _rewrite(V01 / "stateful.fhm", tmp_path / "old.fhm", _inject_text(marker))
    data = tmp_path / "data.csv"
    shutil.copy(V01 / "data.csv", data)
    out = tmp_path / ("out.html" if command == "report" else "out.csv")
    if command == "apply":
        argv = ["apply", bad, data, "--out", out, "--quiet"]
    elif command == "report":
        argv = ["report", data, "--model", bad, "--batch", "site", "--out", out, "--quiet"]
    else:
        argv = ["diagnose", data, "--model", bad, "--batch", "site", "--out", out, "--quiet"]
    expect_refusal(capsys, argv, needles=["__import__"], inputs=[bad, data], outputs=[out])
    assert not marker.exists()


@pytest.mark.parametrize("formula,needle", [
    ('age + I(__import__("os").system("id"))', "__import__"),
    ("age + sex.__class__", "attribute access"),
    ("age + eval('1')", "'eval'"),
    ("age + sex[0]", "'['"),
    ("age + (lambda: 1)", "lambda"),
    ("age + open('x')", "'open'"),
])
def test_hostile_formula_on_the_command_line(capsys, tmp_path, table, formula, needle):
    out = tmp_path / "out.csv"
    r = expect_refusal(capsys, ["harmonize", table, "--batch", "site", "--formula", formula, "--out", out],
                       needles=[needle, "allowed"], inputs=[table], outputs=[out])
    assert formula in r.err


def _fit(tmp_path, table, formula="age + sex"):
    from featharm.cli import main

    model = tmp_path / "m.fhm"
    assert main([str(a) for a in ["harmonize", table, "--batch", "site", "--formula", formula, "--out",
                                  tmp_path / "h.csv", "--save-model", model, "--quiet"]]) == 0
    return model


@pytest.mark.parametrize("column,fit_values,apply_values,needles", [
    ("sex", None, {"F": 0, "M": 1}, ["'sex'", "'F'", "'M'"]),           # text at fit, numbers at apply
    ("sex", {"F": 0, "M": 1}, None, ["'sex'", "numeric at fit"]),        # numbers at fit, text at apply
    ("age", None, "years", ["'age'", "45y"]),                            # numbers at fit, "45y" at apply
])
def test_covariate_coded_differently_at_apply(capsys, tmp_path, table, column, fit_values, apply_values, needles):
    df = pd.read_csv(table)
    train = tmp_path / "train.csv"
    fit_df = df.copy()
    if fit_values:
        fit_df[column] = fit_df[column].map(fit_values)
    fit_df.to_csv(train, index=False)
    model = _fit(tmp_path, train)
    new = df.copy()
    if apply_values == "years":
        new[column] = new[column].map(lambda a: f"{a:.0f}y")
        new.loc[0, column] = "45y"
    elif apply_values:
        new[column] = new[column].map(apply_values)
    src = tmp_path / "new.csv"
    new.to_csv(src, index=False)
    out = tmp_path / "out.csv"
    expect_refusal(capsys, ["apply", model, src, "--out", out, "--quiet"], needles=needles,
                   inputs=[model, src], outputs=[out])
