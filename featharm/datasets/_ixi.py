"""The IXI cortical thickness table bundled as demo data (CC BY-SA 3.0; see data/ixi/NOTICE.md)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

_FILE = "ixi_dk_thickness_tidy.csv"


def _data_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for cand in (here / "_data" / "ixi", here.parent / "data" / "ixi"):  # wheel, then source checkout
        if (cand / _FILE).exists():
            return cand
    raise FileNotFoundError(f"the bundled IXI table {_FILE} is missing from the featharm installation")


def ixi_path() -> Path:
    """Path of the bundled IXI CSV file."""
    return _data_dir() / _FILE


def load_ixi() -> pd.DataFrame:
    """IXI: 556 healthy adults from 3 London sites/scanners (Guys, HH, IOP).

    Returns one DataFrame indexed by ``participant_id`` with ``site``, ``scanner``, ``age`` (years),
    ``sex`` (M/F), Euler numbers, ``eTIV`` and ``BrainSegVolNotVent`` (mm³), 68 Desikan-Killiany regional
    cortical thickness columns (mm, ``lh_bankssts_thickness`` ...) and the two hemispheric means.
    Licence: IXI data CC BY-SA 3.0; table derived by PCNtoolkit-demo (see ``data/ixi/NOTICE.md``).
    """
    df = pd.read_csv(ixi_path())
    df.index = pd.Index(df["participant_id"], name=None)
    return df


def ixi_feature_columns(df: pd.DataFrame) -> list[str]:
    """The 68 regional thickness columns (hemispheric means excluded)."""
    return [c for c in df.columns if c.endswith("_thickness") and "MeanThickness" not in c]
