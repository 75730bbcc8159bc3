"""SSTN respects the transfer function's row limit: single-query blocks are batched to fit it, a
larger graph runs on the fallback (with a logged reason) or raises EngineLimitError."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ssft_deploy.errors import EngineLimitError, InputError
from ssft_deploy.transfer import SINGLE_QUERY_ROWS, SSTN
from tests.test_transfer import make, stand_in_transfer


def limited(rows: int, calls: list[int]):
    """A transfer function that, like a TensorRT profile, refuses more than ``rows`` rows."""
    def fn(z, idx, w):
        assert z.shape[0] <= rows, f"{z.shape[0]} rows > {rows}"
        calls.append(z.shape[0])
        return stand_in_transfer(z, idx, w)
    return fn


def test_single_query_batches_blocks_to_the_limit_and_matches_unlimited():
    query, gallery = make(9, 1, seed=1), make(20, 0, seed=2)
    calls: list[int] = []
    got = SSTN(limited(64, calls), k=3, max_rows=64).single_query_distances(query, gallery)
    want = SSTN(stand_in_transfer, k=3).single_query_distances(query, gallery)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert calls == [63, 63, 63]  # three blocks of 21 rows per call
    assert (np.argsort(got, axis=1) == np.argsort(want, axis=1)).all()


def test_unlimited_engines_batch_up_to_the_memory_bound():
    query, gallery = make(5, 1, seed=3), make(4, 0, seed=4)
    calls: list[int] = []
    SSTN(limited(10**9, calls), k=2).single_query_distances(query, gallery)
    assert calls == [25] and SINGLE_QUERY_ROWS >= 25


def test_all_queries_over_the_limit_uses_the_fallback_with_a_reason(caplog):
    feats = make(30, np.arange(30) % 2, seed=5)
    calls, fb_calls = [], []
    sstn = SSTN(limited(16, calls), k=2, max_rows=16, fallback=limited(10**9, fb_calls))
    with caplog.at_level(logging.WARNING, logger="ssft_deploy.transfer"):
        got = sstn.all_queries(feats)
    np.testing.assert_allclose(got, SSTN(stand_in_transfer, k=2).all_queries(feats), rtol=1e-6)
    assert calls == [] and fb_calls == [30]
    assert "30 rows" in caplog.text and "at most 16" in caplog.text
    sstn.all_queries(feats.take(slice(0, 16)))
    assert calls == [16] and fb_calls == [30]


def test_all_queries_over_the_limit_without_fallback_raises_before_the_affinity_work():
    feats = make(30, np.arange(30) % 2, seed=5)
    sstn = SSTN(limited(16, []), k=2, max_rows=16, affinity="no-such-method")
    with pytest.raises(EngineLimitError, match=r"over 30 rows .* at most 16.*--max-n 30"):
        sstn.all_queries(feats)  # the bad method would raise InputError if the affinity ran


def test_single_query_gallery_larger_than_the_limit():
    query, gallery = make(3, 1, seed=6), make(20, 0, seed=7)
    with pytest.raises(EngineLimitError, match="21 rows"):
        SSTN(limited(16, []), k=2, max_rows=16).single_query_distances(query, gallery)
    fb_calls: list[int] = []
    got = SSTN(limited(16, []), k=2, max_rows=16, fallback=limited(10**9, fb_calls)
               ).single_query_distances(query, gallery)
    assert fb_calls == [63]  # the fallback is unlimited: every block in one call
    np.testing.assert_allclose(got, SSTN(stand_in_transfer, k=2).single_query_distances(
        query, gallery), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "64"])
def test_max_rows_is_checked(bad):
    with pytest.raises(InputError, match="max_rows"):
        SSTN(stand_in_transfer, max_rows=bad)
