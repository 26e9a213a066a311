"""One progress bar for a whole :func:`~featharm.diagnostics.diagnose` run (what ``featharm diagnose``
shows): its steps (per-feature tests, PERMANOVA permutations, the classification's folds and permutations,
for the raw and the harmonized data) share the bar, each with a weight close to its share of the time, and
the bar names the step it is in. Silent unless progress is enabled (the command line) and the run lasts
more than about two seconds (:mod:`featharm._progress`)."""

from __future__ import annotations

from .._progress import Progress

TESTS = "site tests"
PERMANOVA = "PERMANOVA permutations"
PC_TESTS = "MANOVA and Box's M"
MIXING = "site mixing (silhouette, kBET, iLISI)"
FOLDS = "site classification: fold decompositions"
REFITS = "site classification: refitting the harmonizer in the folds"
PERMUTATIONS = "site classification permutations"
UNITS = 1000


def plan(data, *, n_permutations: int, anderson_darling: bool, multivariate: bool, classification: bool,
         classifier: str, classification_permutations: int, harmonizer: bool) -> list:
    """``(data, step, weight)`` of every step, in order; the weights are rough relative times."""
    steps = []
    for d in data:
        steps.append((d, TESTS, 1.0 + (60.0 * n_permutations / 999 if anderson_darling else 0.0)))
        if multivariate:
            steps += [(d, PERMANOVA, 0.6 * n_permutations / 999), (d, PC_TESTS, 0.1), (d, MIXING, 0.2)]
        if classification:
            refit = harmonizer and d == "harmonized"
            per = 0.8 if classifier == "lda" else 20.0
            steps += [(d, REFITS if refit and classifier == "logistic" else FOLDS, 1.0 if refit else 0.3),
                      (d, PERMUTATIONS, per * classification_permutations / 100)]
    return steps


class StageBar:
    """``with StageBar(plan(...)) as sb: ... progress = sb.steps("raw")`` — ``progress(total, step)`` is
    what the diagnostics functions open instead of their own bar."""

    def __init__(self, steps: list, desc: str = "diagnose"):
        total = sum(w for _, _, w in steps) or 1.0
        self.spans, pos = {}, 0.0
        for d, step, w in steps:
            self.spans[(d, step)] = (pos, w / total * UNITS)
            pos += w / total * UNITS
        self.desc = desc
        self.bar = Progress(UNITS, desc)
        self.pos = 0

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self._advance(UNITS)
        return self.bar.__exit__(*exc)

    def _advance(self, target: float) -> None:
        k = int(round(target)) - self.pos
        if k > 0:
            self.pos += k
            self.bar.update(k)

    def steps(self, data: str):
        def progress(total: int, step: str):
            return _Step(self, data, step, total)
        return progress


class _Step:
    def __init__(self, parent: StageBar, data: str, step: str, total: int):
        self.parent, self.total, self.done = parent, max(1, int(total)), 0
        self.start, self.width = parent.spans.get((data, step), (parent.pos, 0.0))
        self.label = f"{parent.desc} ({data}): {step}"

    def __enter__(self):
        # fixed width: a terminal redraws the line in place
        self.parent.bar.desc = f"{self.label[:72]:<72}"
        return self

    def update(self, k: int = 1) -> None:
        self.done += k
        self.parent._advance(self.start + self.width * min(1.0, self.done / self.total))

    def __exit__(self, *exc):
        self.parent._advance(self.start + self.width)
        return False
