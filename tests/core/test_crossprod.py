"""``blocks.crossprod``: ``A.T @ B`` whose bits do not depend on the number of threads."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from featharm._core import blocks


@pytest.mark.parametrize("order", ["C", "F"])
def test_crossprod_is_the_product_for_any_threads(monkeypatch, order):
    rng = np.random.default_rng(0)
    n, p = 3000, 1500  # above SMALL_PROBLEM: two threads may be used; several blocks of columns
    A = rng.normal(size=(n, 5))
    B = np.asarray(rng.normal(5.0, 1.0, (n, p)), order=order)
    outs = []
    for threads in ("1", "2"):
        monkeypatch.setenv("FEATHARM_THREADS", threads)
        for blas in (1, 2):
            with threadpool_limits(blas, user_api="blas"):
                outs.append(blocks.crossprod(A, B))
    assert outs[0].shape == (5, p)
    assert all(o.tobytes() == outs[0].tobytes() for o in outs[1:])
    np.testing.assert_allclose(outs[0], A.T @ B, rtol=1e-13, atol=1e-10)


def test_crossprod_small_is_the_single_product():
    # one block: exactly the call it replaced (so small problems keep their numbers to the bit)
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(200, 7)), np.asfortranarray(rng.normal(size=(200, 6)))
    with threadpool_limits(1, user_api="blas"):
        assert blocks.crossprod(A, B).tobytes() == np.ascontiguousarray(A.T @ B).tobytes()
    assert blocks.crossprod(A, np.zeros((200, 0))).shape == (7, 0)
