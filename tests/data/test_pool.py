"""BufferPool: arrays lent again only once nothing refers to them."""

from __future__ import annotations

import numpy as np

from lsstlite.data._pool import BufferPool


def test_lends_contiguous_arrays() -> None:
    pool = BufferPool(max_bytes=1 << 24)
    for shape in [(3, 7, 33), (1000,), (2, 5)]:
        a = pool.empty(shape, np.float32)
        assert a.shape == shape and a.dtype == np.float32
        assert a.flags["C_CONTIGUOUS"] and a.flags["WRITEABLE"]


def test_reuses_only_arrays_no_longer_referenced() -> None:
    pool = BufferPool(max_bytes=1 << 24)
    a = pool.empty((3, 16, 32), np.float32)
    plane = a[1]  # a view keeps the array lent
    ident = a.ctypes.data
    del a
    b = pool.empty((3, 16, 32), np.float32)
    assert b.ctypes.data != ident
    del plane
    c = pool.empty((3, 16, 32), np.float32)
    assert c.ctypes.data == ident  # free again: lent again
    mask = c[2].view(np.int32)  # as the ISR's mask plane: a view of a view
    del c
    assert pool.empty((3, 16, 32), np.float32).ctypes.data != ident
    del mask
    assert pool.empty((3, 16, 32), np.float32).ctypes.data == ident
    d = pool.empty((3, 16, 32), np.int32)  # another dtype: a new array
    assert d.ctypes.data not in (ident, b.ctypes.data)
    # the first, b, the one lent while the mask view lived, d
    assert pool.nbytes == 4 * (3 * 16 * 32 * 4)


def test_keeps_no_more_than_max_bytes_and_fill() -> None:
    pool = BufferPool(max_bytes=1000)
    big = pool.empty((500,), np.float32)  # 2000 bytes: lent, not kept
    assert pool.nbytes == 0
    big[:] = 1.0
    pool.fill = np.nan
    small = pool.empty((10,), np.float32)
    assert np.isnan(small).all() and pool.nbytes == 40
