"""`featharm harmonize`'s model options come from the estimators' own parameters.

The (option, method) pairs are generated from the CLI's tables (``featharm.cli.harmonize.OPTIONS`` and
``METHODS``) and the estimators' ``__init__`` signatures, so a new option or a new family is covered
without editing this file (beyond a sample value for a new option):

* an option given to a method whose estimator lacks its parameter is a one-line error naming both;
* an option that applies reaches the estimator (fit through the CLI, saved, loaded, ``get_params()``);
* options not given leave the estimator's defaults.

Also: ``featharm --help`` and ``featharm harmonize --help`` import none of the heavy libraries.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import featharm as fh
from featharm.cli import build_parser, main
from featharm.cli.harmonize import METHODS, OPTIONS, REQUIRED, build_model

ROOT = Path(__file__).resolve().parents[2]

# A value of every option for the tests (CLI words, then the parameter the estimator should get), chosen
# to differ from the estimator's default.
SAMPLES = {
    "--batch": (["--batch", "scanner"], "scanner"),
    "--formula": (["--formula", "sex"], "sex"),
    "--no-eb": (["--no-eb"], False),
    "--ref-batch": (["--ref-batch", "site01"], "site01"),
    "--nonparametric": (["--nonparametric"], False),
    "--mean-only": (["--mean-only"], True),
    "--subject": (["--subject", "participant"], "participant"),
    "--time": (["--time", "time"], "time"),
    "--random-slope": (["--random-slope"], True),
    "--standardize": (["--standardize", "msr"], "msr"),
    "--smooth": (["--smooth", "age"], ["age"]),
    "--smooth-method": (["--smooth-method", "GCV"], "GCV"),
    "--shared-smoothing": (["--shared-smoothing"], True),
    "--percent-var": (["--percent-var", "0.8"], 0.8),
    "--n-components": (["--n-components", "2"], 2),
    "--scale-formula": (["--scale-formula", "age"], "age"),
    "--missing-covariates": (["--missing-covariates", "exclude"], "exclude"),
    "--n-jobs": (["--n-jobs", "1"], 1),
    "--scale": (["--scale"], True),
}
# What a fit needs besides the option tested: options of every fit, of a method, of an option.
NEEDED = {"all": ["--batch"], "longitudinal": list(REQUIRED["longitudinal"]), "gam": ["--smooth"],
          "--random-slope": ["--time"], "traveling": list(REQUIRED["traveling"]),
          "longgam": list(REQUIRED["longgam"])}
# harmonize's options that are not the model's
NOT_MODEL = {"-h", "--help", "--method", "--features", "--save-model", "--report", "--covariates", "--id", "--out",
             "--quiet", "--missing", "--float-format", "--include", "--scheduler"}


def _params(method) -> set:
    """The constructor parameters of the method's estimator, from its signature."""
    cls = getattr(fh, METHODS[method])
    return {n for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY}


def _applies(opt, method) -> bool:
    return opt.param in _params(method)


REFUSED = [(o.flag, m) for o in OPTIONS for m in METHODS if not _applies(o, m)]
APPLIED = [(o.flag, m) for o in OPTIONS for m in METHODS if _applies(o, m)]
_BY_FLAG = {o.flag: o for o in OPTIONS}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Repeated scans (subject, time) at 3 sites: every method can be fitted on it."""
    sim = fh.datasets.make_longitudinal(n_subjects=40, n_sites=3, n_features=4, random_state=1)
    cov = sim.covariates.rename(columns={"site": "scanner", "subject": "participant"})
    path = tmp_path_factory.mktemp("options") / "scans.csv"
    cov.join(sim.X).reset_index().to_csv(path, index=False)
    return path


def _needed(method, flag=None) -> list:
    """The options (flags) a fit of ``method`` with option ``flag`` needs besides it."""
    return [f for f in (*NEEDED["all"], *NEEDED.get(method, []), *NEEDED.get(flag, [])) if f != flag]


def _harmonize(table, out_dir, method, *words, flag=None):
    """``featharm harmonize`` with the option ``flag`` (``words``) and the options a fit of it needs."""
    needed = [w for f in _needed(method, flag) for w in SAMPLES[f][0]]
    return ["harmonize", str(table), "--method", method, "--id", "scan", "--features", "roi*",
            "--out", str(out_dir / "h.csv"), "--quiet", *needed, *words]


# ---------------------------------------------------------------------------------------------- the tables
def test_the_tables_cover_every_option_and_method():
    assert set(METHODS) == {"combat", "gam", "longitudinal", "covbat", "combatls", "traveling", "longgam"}
    assert set(SAMPLES) == set(_BY_FLAG), "give every option of OPTIONS a sample value in SAMPLES"
    assert len({o.dest for o in OPTIONS}) == len(OPTIONS)
    for opt in OPTIONS:  # every option sets a parameter some estimator has
        assert any(_applies(opt, m) for m in METHODS), f"{opt.flag}: no estimator has {opt.param!r}"
    for method, required in REQUIRED.items():
        assert set(required) <= set(_BY_FLAG) and all(_applies(_BY_FLAG[f], method) for f in required)
        assert all(f in message for f, message in required.items())
    assert REFUSED and APPLIED


def test_every_model_option_of_the_parser_is_in_the_table():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["harmonize"]
    flags = {f for a in sub._actions for f in a.option_strings}
    assert flags - NOT_MODEL == set(_BY_FLAG)


@pytest.mark.parametrize("flag", list(_BY_FLAG))
def test_help_lists_each_option_under_the_methods_it_applies_to(flag):
    opt = _BY_FLAG[flag]
    applies = [m for m in METHODS if _applies(opt, m)]
    assert sorted(opt.methods or METHODS) == sorted(applies)


# ---------------------------------------------------------------------------------------------- refused
@pytest.mark.parametrize("flag, method", REFUSED)
def test_an_option_that_does_not_apply_is_refused(table, tmp_path, capsys, flag, method):
    opt, (words, _) = _BY_FLAG[flag], SAMPLES[flag]
    assert main(_harmonize(table, tmp_path, method, *words)) == 2  # with what the method needs
    err = capsys.readouterr().err
    cls = METHODS[method]
    assert err.startswith(f"featharm: error: {flag} does not apply to --method {method} ({cls} has no "
                          f"{opt.param!r} parameter); it applies to --method ")
    assert err.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_a_required_option_is_asked_for(table, tmp_path, capsys):
    for method, required in REQUIRED.items():
        for flag, message in required.items():
            words = [w for f in _needed(method, flag) if f not in required for w in SAMPLES[f][0]]
            assert main(_harmonize(table, tmp_path, "combat", "--method", method, *words)) == 2
            assert capsys.readouterr().err == f"featharm: error: {message}\n"


# ---------------------------------------------------------------------------------------------- applied
@pytest.mark.parametrize("flag, method", APPLIED)
# --formula sex with --method traveling: sex is constant within subjects, left out with a CollinearityWarning
@pytest.mark.filterwarnings("ignore::featharm.exceptions.CollinearityWarning")
def test_an_option_that_applies_reaches_the_estimator(table, tmp_path, flag, method):
    opt, (words, expected) = _BY_FLAG[flag], SAMPLES[flag]
    assert getattr(fh, METHODS[method])().get_params()[opt.param] != expected  # a sample the default is not
    model = tmp_path / "m.fhm"
    argv = _harmonize(table, tmp_path, method, *words, flag=flag)
    assert main([*argv, "--save-model", str(model)]) == 0
    fitted = fh.load_model(model)
    assert type(fitted).__name__ == METHODS[method]
    if opt.param in fitted._unsaved_params:  # a setting of the run (n_jobs), not stored in the model file:
        assert fitted.get_params()[opt.param] is None  # the loaded model has the default; the command's has it
        assert build_model(build_parser().parse_args(argv)).get_params()[opt.param] == expected
    else:
        assert fitted.get_params()[opt.param] == expected


@pytest.mark.parametrize("method", list(METHODS))
def test_options_not_given_leave_the_estimators_defaults(table, tmp_path, method):
    model = tmp_path / "m.fhm"
    assert main([*_harmonize(table, tmp_path, method), "--save-model", str(model)]) == 0
    given = {_BY_FLAG[f].param for f in _needed(method)}
    defaults = getattr(fh, METHODS[method])().get_params()
    params = fh.load_model(model).get_params()
    assert {k: v for k, v in params.items() if k not in given} == {k: v for k, v in defaults.items()
                                                                    if k not in given}


# ---------------------------------------------------------------------------------------------- fast --help
HEAVY = ("sklearn", "matplotlib", "seaborn", "statsmodels", "formulaic", "scipy.stats")


def _loaded_after_help(argv, *, bare_package: bool) -> list:
    """The heavy modules in sys.modules after ``featharm ARGV --help`` in a fresh interpreter.

    ``bare_package``: featharm/__init__.py is not run (an empty package stands in for it), so only what
    the command line itself imports is seen.
    """
    stub = ("import types; pkg = types.ModuleType('featharm'); pkg.__path__ = [%r]; "
            "sys.modules['featharm'] = pkg; " % str(ROOT / "featharm")) if bare_package else ""
    code = (f"import sys; {stub}from featharm.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print('loaded:', *(m for m in {HEAVY!r} if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "usage: featharm" in run.stdout
    return run.stdout.strip().splitlines()[-1].split()[1:]


@pytest.mark.parametrize("argv", [["--help"], ["harmonize", "--help"]])
def test_help_does_not_import_the_heavy_libraries(argv):
    assert _loaded_after_help(argv, bare_package=True) == []


def _featharm_is_light() -> bool:
    code = f"import sys, featharm; print(any(m in sys.modules for m in {HEAVY!r}))"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip() == "False"


@pytest.mark.parametrize("argv", [["--help"], ["harmonize", "--help"]])
def test_help_with_the_package_does_not_import_the_heavy_libraries(argv):
    if not _featharm_is_light():  # the test above checks the command line's own imports meanwhile
        pytest.xfail("featharm/__init__ still imports the models (lead's change pending)")
    assert _loaded_after_help(argv, bare_package=False) == []
