"""numba intrinsics for operations of generated code that must compile to one instruction.

`primitives.guarded_mul(factor, partial)` is `factor * partial` where a zero factor adds nothing.
Compiled as a Python function it would be a separate function with a branch (numba IR blocks,
a function in the link diff); as an intrinsic it lowers inline to a multiply, a compare and a
`select`, on the CPU and on the GPU alike.
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
        f = args[0]
        operands = [context.cast(builder, v, t, want)
                    for v, t, want in zip(args, (factor, partial), product.args)]
        value = context.get_function(operator.mul, product)(builder, operands)
        zero = context.get_constant_generic(builder, factor, 0)
        f_nonzero = context.cast(builder, f, factor, is_nonzero.args[0])
        zero = context.cast(builder, zero, factor, is_nonzero.args[1])
        nonzero = context.get_function(operator.ne, is_nonzero)(builder, [f_nonzero, zero])
        nonzero = context.is_true(builder, is_nonzero.return_type, nonzero)
        return builder.select(nonzero, value, context.cast(builder, f, factor, result))

    return signature(result, factor, partial), codegen


def cpu_guarded_mul():
    from numba.core.extending import intrinsic

    return intrinsic(guarded_mul_typer)


def cuda_guarded_mul():
    from numba.cuda.extending import intrinsic

    return intrinsic(guarded_mul_typer)
