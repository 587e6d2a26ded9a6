"""numba intrinsics for operations of generated code that must compile to one instruction.

`primitives.guarded_mul(factor, partial)` is `factor * partial` where a zero factor adds nothing.
Compiled as a Python function it would be a separate function with a branch (numba IR blocks,
a function in the link diff); as an intrinsic it lowers inline to a multiply, a compare and a
`select`, on the CPU and on the GPU alike. The select picks the partial or 0 before the multiply
(`factor * (partial if factor != 0 else 0)`, the same value: a zero factor times 0 is that zero),
so that an add of the product that follows (a caller's `f + ax` of a returned adjoint) fuses
with it into an fma; a select after the multiply stands between them.
`guarded_add_mul(acc, factor, partial)` selects between `acc + factor * partial` and `acc`, so
that NVVM fuses its multiply-add into an fma.
`cuda_element_address` gives the address of an array element, which warp-combined atomics
(`targets/warp_atomics.py`) compare across lanes.
"""
from __future__ import annotations

import operator


def guarded_mul_typer(typingctx, factor, partial):
    """Typing and lowering of `guarded_mul` for numba's `intrinsic` decorators (cpu and cuda)."""
    from numba.core.typing import signature

    product = typingctx.resolve_function_type(operator.mul, (factor, partial), {})
    is_nonzero = typingctx.resolve_function_type(operator.ne, (factor, factor), {})
    if product is None or is_nonzero is None:
        return None
    result = product.return_type

    def codegen(context, builder, sig, args):
        f, p = [context.cast(builder, v, t, want)
                for v, t, want in zip(args, (factor, partial), product.args)]
        nonzero = _is_nonzero(context, builder, args[0], factor, is_nonzero)
        p = builder.select(nonzero, p, context.get_constant_generic(builder, product.args[1], 0))
        return context.get_function(operator.mul, product)(builder, [f, p])

    return signature(result, factor, partial), codegen


def guarded_add_mul_typer(typingctx, acc, factor, partial):
    """Typing and lowering of `guarded_add_mul`: `select(factor != 0, acc + factor * partial, acc)`.
    The add takes the product directly, so NVVM contracts the two into an fma."""
    from numba.core.typing import signature

    product = typingctx.resolve_function_type(operator.mul, (factor, partial), {})
    if product is None:
        return None
    total = typingctx.resolve_function_type(operator.add, (acc, product.return_type), {})
    is_nonzero = typingctx.resolve_function_type(operator.ne, (factor, factor), {})
    if total is None or is_nonzero is None:
        return None
    result = total.return_type

    def codegen(context, builder, sig, args):
        a, f, p = args
        operands = [context.cast(builder, v, t, want)
                    for v, t, want in zip((f, p), (factor, partial), product.args)]
        value = context.get_function(operator.mul, product)(builder, operands)
        addends = [context.cast(builder, a, acc, total.args[0]),
                   context.cast(builder, value, product.return_type, total.args[1])]
        value = context.get_function(operator.add, total)(builder, addends)
        nonzero = _is_nonzero(context, builder, f, factor, is_nonzero)
        return builder.select(nonzero, context.cast(builder, value, total.return_type, result),
                              context.cast(builder, a, acc, result))

    return signature(result, acc, factor, partial), codegen


def _is_nonzero(context, builder, value, ty, is_nonzero):
    zero = context.cast(builder, context.get_constant_generic(builder, ty, 0), ty, is_nonzero.args[1])
    value = context.cast(builder, value, ty, is_nonzero.args[0])
    nonzero = context.get_function(operator.ne, is_nonzero)(builder, [value, zero])
    return context.is_true(builder, is_nonzero.return_type, nonzero)


def cpu_guarded_add_mul():
    from numba.core.extending import intrinsic

    return intrinsic(guarded_add_mul_typer)


def cuda_guarded_add_mul():
    from numba.cuda.extending import intrinsic

    return intrinsic(guarded_add_mul_typer)


def cpu_guarded_mul():
    from numba.core.extending import intrinsic

    return intrinsic(guarded_mul_typer)


def cuda_guarded_mul():
    from numba.cuda.extending import intrinsic

    return intrinsic(guarded_mul_typer)


def cuda_element_address():
    """`element_address(array, index)`: the address of `array[index]` as an int64, for the cuda
    target (`targets/warp_atomics.py` compares lanes' addresses)."""
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.core.typing import signature
    from numba.cuda.extending import intrinsic

    @intrinsic
    def element_address(typingctx, array, index):
        """The address of `array[index]` as an int64 (no bounds check: the atomic makes none)."""
        if not isinstance(array, types.Array):
            return None
        if isinstance(index, types.Integer):
            indices = (index,)
        elif isinstance(index, types.BaseTuple) and all(isinstance(t, types.Integer) for t in index):
            indices = tuple(index)
        else:
            return None
        if len(indices) != array.ndim:
            return None

        def codegen(context, builder, sig, args):
            arytype, indextype = sig.args
            ary = context.make_array(arytype)(context, builder, args[0])
            if isinstance(indextype, types.Integer):
                values = [args[1]]
            else:
                values = cgutils.unpack_tuple(builder, args[1], len(indices))
            values = [context.cast(builder, v, t, types.intp) for v, t in zip(values, indices)]
            pointer = cgutils.get_item_pointer(context, builder, arytype, ary, values, wraparound=False)
            return builder.ptrtoint(pointer, ir.IntType(64))

        return signature(types.int64, array, index), codegen

    return element_address
