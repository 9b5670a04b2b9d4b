"""LLVM vector helpers for numba intrinsics (the hot tap sums of the resampling kernels).

LLVM's vectorisers pack at most a power of two of lanes out of scalar loops over 6 or
10 taps; the kernels that need all lanes write the vector code themselves (see
docs/design/coadd.md). These are the pieces they share.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils

__all__ = ["load_lanes", "splat", "tree_sum", "tree_sums"]


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


def load_lanes(builder: ir.IRBuilder, ptr: ir.Value, vec: ir.VectorType, count: int) -> ir.Value:
    """The ``count`` floats (float32) at ``ptr`` in the first lanes of a ``vec``, the
    other lanes 0, reading nothing beyond them.

    One masked load (``llvm.masked.load``, which LLVM lowers on any target; a single
    instruction with AVX-512), where a 6-lane vector load became two loads and an insert.
    """
    if vec.element != ir.FloatType():
        raise TypeError("load_lanes: float32 vectors only")
    n = vec.count
    mask_type = ir.VectorType(ir.IntType(1), n)
    # The i32 alignment operand: LLVM versions that made it a parameter attribute
    # upgrade this form on parsing.
    fn = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(vec, [vec.as_pointer(), ir.IntType(32), mask_type, vec]),
        f"llvm.masked.load.v{n}f32.p0",
    )
    mask = ir.Constant(mask_type, [int(k < count) for k in range(n)])
    zero = ir.Constant(vec, [0.0] * n)
    return builder.call(
        fn, [builder.bitcast(ptr, vec.as_pointer()), ir.Constant(ir.IntType(32), 4), mask, zero]
    )


def tree_sums(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, count: int) -> ir.Value:
    """A vector (the type of ``a`` and ``b``) whose lanes 0 and 1 are
    ``tree_sum(a, count)`` and ``tree_sum(b, count)``, bit for bit.

    Each level of :func:`tree_sum` adds adjacent terms (an odd last term waits for a
    later level); here a level is two shuffles and one vector add with the terms of
    ``a`` and ``b`` side by side (lane-wise adds round as the scalar ones), instead of
    extracting every lane.
    """
    vec = a.type
    width = vec.count
    if not 0 < count <= width:
        raise ValueError("tree_sums: 1 to width terms")
    i32 = ir.IntType(32)
    undef = ir.Constant(vec, ir.Undefined)
    # each term: where its value for a and for b is, as (vector, lane)
    terms = [((a, k), (b, k)) for k in range(count)]
    while len(terms) > 1:
        n_pairs = len(terms) // 2
        used = [t[s] for t in terms[: 2 * n_pairs] for s in (0, 1)]
        operands: list[ir.Value] = []
        for src, _ in used:
            if all(src is not o for o in operands):
                operands.append(src)
        if len(operands) > 2:
            # an odd term of ``a`` and ``b`` left over to a third level (count 3, 5, 7)
            raise ValueError(f"tree_sums: {count} terms not supported")
        halves = []
        for first in (0, 1):
            lanes = [terms[2 * k + first][s] for s in (0, 1) for k in range(n_pairs)]
            mask = [
                ir.Constant(i32, lane if src is operands[0] else width + lane)
                for src, lane in lanes
            ]
            mask += [ir.Constant(i32, 0)] * (width - len(mask))  # unused lanes
            halves.append(
                builder.shuffle_vector(
                    operands[0],
                    operands[1] if len(operands) > 1 else undef,
                    ir.Constant(ir.VectorType(i32, width), mask),
                )
            )
        summed = builder.fadd(halves[0], halves[1])
        # lanes of summed: a's pair sums, then b's
        terms = [((summed, k), (summed, n_pairs + k)) for k in range(n_pairs)] + terms[
            2 * n_pairs :
        ]
    (src_a, lane_a), (src_b, lane_b) = terms[0]
    if src_a is src_b and (lane_a, lane_b) == (0, 1):
        return src_a
    last = [lane_a, lane_b if src_b is src_a else width + lane_b]
    mask = [ir.Constant(i32, m) for m in last] + [ir.Constant(i32, 0)] * (width - 2)
    return builder.shuffle_vector(
        src_a, undef if src_b is src_a else src_b, ir.Constant(ir.VectorType(i32, width), mask)
    )
