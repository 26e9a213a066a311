"""Regenerate the per-version subject fixtures: ``python tests/data/freesurfer/make_fixtures.py``.

Each ``fs<version>/<subject>/stats/`` holds every stats file ``recon-all`` writes in that FreeSurfer version,
in its exact layout, with synthetic values (``featharm.datasets._freesurfer_synth``, fixed seeds). The group
tables in ``tables/`` were written by hand in the layouts of asegstats2table / aparcstats2table / the ENIGMA scripts.
"""

from pathlib import Path

from featharm.datasets._freesurfer_synth import write_subject

HERE = Path(__file__).parent
for version, subject, seed in (("5.3", "bert53", 53), ("6.0", "bert60", 60), ("7.4", "bert74", 74)):
    write_subject(HERE / f"fs{version}" / subject, version, seed=seed)
