"""The naming legend: every prefix a name in generated derivative code starts with, and what it means.

Generated code is meant to be read, so its names follow one legend (model: Tangent's `naming.py`).
`LEGEND` is the table `docs/design.md` shows; the constants are what the engine spells names
with. A user name that starts with a generated prefix is escaped as `u_<name>`
(`gpuad.ad.normalize`), so no user name can meet a generated one.
"""
from __future__ import annotations

ADJOINT = "d_"  # d_x: the adjoint of x (reverse mode); an array's shadow
TANGENT = "t_"  # t_x: the tangent of x (forward mode)
ESCAPE = "u_"  # u_x: a user name that looks like a generated one
AUGMENTED = "aug_"  # aug_g: the forward half of callee g (reverse mode)
REVERSE_HALF = "rev_"  # rev_g: the reverse half of callee g
TANGENT_FUNCTION = "tan_"  # tan_g: the tangent function of callee g (forward mode)
ENTRIES = ("reverse_", "forward_")  # reverse_f, forward_with_primal_f, ...: the job's entry function
UNUSED = "_unused_"  # _unused_d_a: a shadow parameter the derivative does not read

# Every name the engine generates starts with one of these ("_" covers the temporaries below).
GENERATED_PREFIXES = ("_", ESCAPE, ADJOINT, TANGENT, AUGMENTED, REVERSE_HALF, TANGENT_FUNCTION, *ENTRIES)

# prefix -> one-line meaning, in the order docs/design.md lists them.
LEGEND: dict[str, str] = {
    ADJOINT: "adjoint of a value (reverse mode), or an array's shadow",
    TANGENT: "tangent of a value (forward mode)",
    ESCAPE: "a user name that looks like a generated one, escaped",
    AUGMENTED: "forward half of a callee: runs it and tapes what its reverse half needs",
    REVERSE_HALF: "reverse half of a callee: returns its arguments' adjoints",
    TANGENT_FUNCTION: "tangent function of a callee: returns (value, tangent)",
    "reverse_": "entry function of a reverse job (reverse_with_primal_ returns the primal too)",
    "forward_": "entry function of a forward job (forward_with_primal_ returns the primal too)",
    UNUSED: "a shadow or tangent parameter the derivative does not read",
    "_t": "temporary of the normalised form (one operation each)",
    "_v": "a later binding of a user variable (SSA version: _v1_x)",
    "_w": "a later binding of an array name (each binding has its own view: _w1_r)",
    "_vi": "an index a view captured when it was bound",
    "_li": "the counter of a loop whose variable was bound before the loop",
    "_i": "the counter of a loop whose body rebinds the loop variable",
    "_pk": "a tuple packed from scalarised elements",
    "_brk": "flag: a break or return left the loop",
    "_skip": "flag: a continue skips the rest of the iteration",
    "_done": "flag: the function has returned",
    "_ret": "the returned value",
    "_tf": "the float tape (per thread)",
    "_ti": "the int tape: decisions, trip counts, integer values",
    "_spf": "stack pointer of the float tape",
    "_spi": "stack pointer of the int tape",
    "_capf": "capacity of the float tape",
    "_capi": "capacity of the int tape",
    "_base": "where a loop's entries start on the tape (their room reserved before the loop)",
    "_step": "the entries a reserved loop writes per iteration (0 when they do not fit)",
    "_s": "a value saved in a local (outside loops) before a statement overwrites it",
    "_e": "a shadow element an update reads, read early (before the loads and math it computes from)",
    "_c": "a recorded branch decision",
    "_n": "a loop's recorded trip count",
    "_k": "a loop's counter in the reverse sweep",
    "_g": "checkpointed loop: the segment the reverse sweep is at",
    "_m": "checkpointed loop: the segment's iteration count",
    "_j": "checkpointed loop: iteration of the segment's recomputation",
    "_r": "an adjoint a callee's reverse half returned, or the reverse iteration of a checkpointed "
          "segment",
    "_seed": "reverse half: the adjoint of the callee's result, given by the caller",
    "_ur": "the adjoints a user rule's reverse function returned",
    "_tt": "the tangent of a callee's result the caller does not use",
    "_primal": "reverse with primal: the returned value, kept apart from the reverse sweep",
    "_adstub": "a nested autodiff call's typing stand-in (typing only, never generated code)",
}


def adjoint(name: str) -> str:
    """The name of `name`'s adjoint (`d_x`)."""
    return ADJOINT + name


def tangent(name: str) -> str:
    """The name of `name`'s tangent (`t_x`)."""
    return TANGENT + name
