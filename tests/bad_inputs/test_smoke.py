"""The harness itself: a refusal that holds today, and a fitted model of every family."""

from .conftest import expect_refusal


def test_missing_batch_column(capsys, table, tmp_path):
    out = tmp_path / "out" / "h.csv"
    out.parent.mkdir()
    expect_refusal(capsys, ["harmonize", table, "--batch", "scanner", "--formula", "age", "--out", out],
                   needles=["scanner"], inputs=[table], outputs=[out])


def test_every_family_fits(family_model):
    family, model, data = family_model
    assert model.stat().st_size > 0 and data.exists()
