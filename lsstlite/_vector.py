"""LLVM vector helpers for numba intrinsics (the hot tap sums of the resampling kernels).

LLVM's vectorisers pack at most a power of two of lanes out of scalar loops over 6 or
10 taps; the kernels that need all lanes write the vector code themselves (see
docs/design/coadd.md). These are the pieces they share.
"""

from __future__ import annotations

from llvmlite import ir

__all__ = ["splat", "tree_sum"]


def splat(builder: ir.IRBuilder, value: ir.Value, vec: ir.VectorType) -> ir.Value:
    """``value`` in every lane of a ``vec``."""
    undef = ir.Constant(vec, ir.Undefined)
    lane0 = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), vec.count), [0] * vec.count)
    return builder.shuffle_vector(lane0, undef, zeros)


def tree_sum(builder: ir.IRBuilder, vec: ir.Value, count: int) -> ir.Value:
    """The sum of the ``count`` lanes of ``vec`` as a fixed pairwise tree (the same
    order whatever the data: results do not depend on memory alignment)."""
    terms = [builder.extract_element(vec, ir.Constant(ir.IntType(32), k)) for k in range(count)]
    while len(terms) > 1:
        pairs = [builder.fadd(terms[k], terms[k + 1]) for k in range(0, len(terms) - 1, 2)]
        terms = pairs + terms[len(pairs) * 2 :]
    return terms[0]
