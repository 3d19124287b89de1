"""aeatrain/data/d4.py: the D4 group."""

import numpy as np

from aeatrain.data import d4


def test_d4_ops_are_the_eight_distinct_symmetries_and_invert():
    image = np.arange(12).reshape(3, 4)
    results = [d4.transform(image, op) for op in range(8)]
    assert len({(r.shape, r.tobytes()) for r in (np.ascontiguousarray(x) for x in results)}) == 8
    for op in range(8):
        np.testing.assert_array_equal(d4.transform(results[op], d4.inverse(op)), image)
    np.testing.assert_array_equal(d4.transform(image, 4), image[:, ::-1])
    np.testing.assert_array_equal(d4.transform(image, 2), image[::-1, ::-1])
    for op in range(8):  # the non-square subset keeps the shape
        assert d4.transform(image, d4.shape_preserving(op)).shape == (3, 4)


def test_d4_is_paired_on_a_batch_axis():
    lr = np.random.default_rng(0).random((2, 1, 5, 5))
    for op in range(8):
        both = d4.transform(np.stack([lr, 1 - lr]), op)
        np.testing.assert_allclose(both[0] + both[1], 1.0)
        np.testing.assert_array_equal(both[0], d4.transform(lr, op))
