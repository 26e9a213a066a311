"""The bad-input battery: what featharm does with tables, model files and paths that are wrong.

Every case goes through the command line as a user or an attacker would and asserts the same contract
(:func:`expect_refusal`):

* the exit code is 2 (a user's mistake, not a crash);
* standard error is one line, ``featharm: error: ...``, that names the problem (the ``needles``);
* no traceback is printed;
* no output file appears (not even a temporary one) in the output folders;
* every input file is byte-identical afterwards.

Hostile model files are built here from really fitted models (:func:`fitted_model`), then damaged.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

import featharm as fh
from featharm.cli import main

FAMILIES = {
    "combat": dict(method="combat", args=[]),
    "gam": dict(method="gam", args=["--smooth", "age"]),
    "longitudinal": dict(method="longitudinal", args=["--subject", "subject"]),
    "covbat": dict(method="covbat", args=[]),
    "combatls": dict(method="combatls", args=[]),
}


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _listing(folders) -> dict:
    return {str(p): None for d in folders for p in Path(d).iterdir()} if folders else {}


@dataclass
class Refusal:
    code: int
    err: str
    out: str


def expect_refusal(capsys, argv, *, needles=(), inputs=(), outputs=(), code: int = 2) -> Refusal:
    """Run ``featharm ARGV`` in-process and assert the refusal contract; return what it printed.

    ``inputs``: files that must be byte-identical afterwards. ``outputs``: paths that must not exist
    afterwards; their folders must hold no new file (temporaries included).
    """
    argv = [str(a) for a in argv]
    before = {str(p): _digest(p) for p in inputs}
    folders = sorted({str(Path(o).parent) for o in outputs if Path(o).parent.is_dir()})
    listed = {d: sorted(os.listdir(d)) for d in folders}
    capsys.readouterr()
    rc = main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert rc == code, f"exit code {rc}, expected {code}; stderr:\n{err}"
    assert "Traceback" not in err and "Traceback" not in captured.out, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("featharm: error:")]
    assert len(errors) == 1, f"expected one error line, got:\n{err}"
    assert "\n" not in errors[0]
    msg = errors[0]
    for needle in needles:
        assert needle.lower() in msg.lower(), f"{needle!r} not in {msg!r}"
    for p, digest in before.items():
        assert _digest(p) == digest, f"input {p} was modified"
    for o in outputs:
        assert not Path(o).exists(), f"output {o} was written"
    for d, names in listed.items():
        assert sorted(os.listdir(d)) == names, f"{d} gained {set(os.listdir(d)) - set(names)}"
    return Refusal(rc, msg, captured.out)


def run_subprocess(argv, **kwargs) -> subprocess.CompletedProcess:
    """``featharm ARGV`` in a fresh interpreter (for signals and anything that must not share a process)."""
    return subprocess.run([sys.executable, "-m", "featharm.cli", *map(str, argv)], capture_output=True,
                          text=True, **kwargs)


def _table(n_subjects=90, n_sites=3, n_features=6, seed=0) -> pd.DataFrame:
    s = fh.datasets.make_multisite(n_subjects=n_subjects, n_sites=n_sites, n_features=n_features,
                                   random_state=seed)
    cov = s.covariates.copy()
    df = pd.concat([cov, s.X], axis=1)
    df.insert(0, "subject_id", [f"sub-{i:03d}" for i in range(len(df))])
    return df.reset_index(drop=True)


def _long_table(seed=0) -> pd.DataFrame:
    s = fh.datasets.make_longitudinal(n_subjects=80, n_features=6, random_state=seed)
    cov = s.covariates.copy()
    df = pd.concat([cov, s.X], axis=1)
    df.insert(0, "scan_id", [f"scan-{i:04d}" for i in range(len(df))])
    return df.reset_index(drop=True)


@pytest.fixture
def table(tmp_path) -> Path:
    """A small cross-sectional CSV: subject_id, site, age, sex, features."""
    path = tmp_path / "in" / "data.csv"
    path.parent.mkdir()
    _table().to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def _model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def fitted_model(family: str, folder: Path) -> tuple[Path, Path]:
    """(model file, data CSV) of ``family`` fitted through the CLI on a small table."""
    folder = Path(folder)
    data = folder / f"{family}_data.csv"
    model = folder / f"{family}.fhm"
    if model.exists():
        return model, data
    spec = FAMILIES[family]
    if family == "longitudinal":
        df = _long_table()
        formula = "age + sex + time"
    else:
        df = _table()
        formula = "age + sex" if family != "gam" else "sex"
    df.to_csv(data, index=False)
    rc = main(["harmonize", str(data), "--batch", "site", "--formula", formula, "--method", spec["method"],
               *spec["args"], "--out", str(folder / f"{family}_h.csv"), "--save-model", str(model), "--quiet"])
    assert rc == 0, family
    return model, data


@pytest.fixture(params=sorted(FAMILIES))
def family_model(request, _model_dir):
    """(family, model file, data CSV) for each of the five families."""
    model, data = fitted_model(request.param, _model_dir)
    return request.param, model, data
