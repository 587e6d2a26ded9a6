"""LLVM IR text as a small set of named top-level entities.

numba-cuda's modules must reach NVVM as typed-pointer IR text; a round trip
through llvmlite.binding (LLVM 22) would make it opaque-pointer IR, which
that NVVM path rejects. So gpuad's linker works on the text, which llvmlite
prints in a regular shape: one global, declaration or metadata node per line,
and definitions from `define` to a line holding only `}`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# The deferred-codegen marker: `call i8* @"gpuad.deferred_codegen"(i64 ID)` in a lowered module,
# replaced by the linker with a call of job ID's derivative (the one place this name is spelled).
MARKER_SYMBOL = "gpuad.deferred_codegen"

_SYMBOL = r'@(?:"(?P<q>[^"]+)"|(?P<b>[-\w.$]+))'
_DEFINE = re.compile(r"^define\b.*?" + _SYMBOL + r"\(")
_DECLARE = re.compile(r"^declare\b.*?" + _SYMBOL + r"\(")
_GLOBAL = re.compile(r"^" + _SYMBOL + r"\s*=")
_TYPE = re.compile(r'^%(?:"[^"]+"|[-\w.$]+)\s*=\s*type\b')
_NUMBERED_MD = re.compile(r"^!(\d+)\s*=")
_NAMED_MD = re.compile(r"^!([A-Za-z_.][-\w.]*)\s*=\s*!\{(.*)\}\s*$")
_MD_REF = re.compile(r"!(\d+)\b")
_HEADER = ("; ModuleID", "target ", "source_filename")


def _symbol(match: re.Match) -> str:
    return match.group("q") or match.group("b")


@dataclass
class Entity:
    """A top-level entity: `kind` is global, type, declare or define."""

    kind: str
    name: str
    text: str


@dataclass
class IRModule:
    """A parsed module: header lines, named entities, metadata."""

    header: list[str] = field(default_factory=list)
    entities: dict[str, Entity] = field(default_factory=dict)
    metadata: dict[int, str] = field(default_factory=dict)  # id → whole line
    named_metadata: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> IRModule:
        module = cls()
        lines = iter(text.splitlines())
        for line in lines:
            if m := _DEFINE.match(line):
                body = [line]
                for inner in lines:
                    body.append(inner)
                    if inner == "}":
                        break
                module._add(Entity("define", _symbol(m), "\n".join(body)))
            elif m := _DECLARE.match(line):
                module._add(Entity("declare", _symbol(m), line))
            elif m := _GLOBAL.match(line):
                module._add(Entity("global", _symbol(m), line))
            elif _TYPE.match(line):
                module._add(Entity("type", line.split("=")[0].strip(), line))
            elif m := _NUMBERED_MD.match(line):
                module.metadata[int(m.group(1))] = line
            elif m := _NAMED_MD.match(line):
                operands = [o.strip() for o in m.group(2).split(",") if o.strip()]
                module.named_metadata.setdefault(m.group(1), []).extend(operands)
            elif line.startswith(_HEADER):
                module.header.append(line)
            elif line.startswith("attributes #"):
                raise ValueError("attribute groups are not supported by the text linker")
        return module

    def _add(self, entity: Entity) -> None:
        existing = self.entities.get(entity.name)
        if existing is None or (existing.kind == "declare" and entity.kind == "define"):
            self.entities[entity.name] = entity

    def text(self) -> str:
        order = ("type", "global", "declare", "define")
        parts = ["\n".join(self.header)]
        for kind in order:
            parts += [e.text for e in self.entities.values() if e.kind == kind]
        for name, operands in self.named_metadata.items():
            parts.append(f"!{name} = !{{ {', '.join(operands)} }}")
        parts += [self.metadata[k] for k in sorted(self.metadata)]
        return "\n\n".join(p for p in parts if p) + "\n"

    def defines(self, name: str) -> bool:
        entity = self.entities.get(name)
        return entity is not None and entity.kind == "define"


def merge_into(base: IRModule, other: IRModule) -> None:
    """Append `other`'s entities to `base` (the core of the linker).

    A definition wins over a declaration; a second definition of the same
    symbol (numba's `linkonce_odr` device functions shared by kernel and job)
    is dropped. `other`'s metadata ids are renumbered past `base`'s, and its
    `!nvvmir.version` is dropped: a module has one.
    """
    offset = max(base.metadata, default=-1) + 1
    renumber = (lambda text: _MD_REF.sub(lambda m: f"!{int(m.group(1)) + offset}", text))
    entities = [Entity(e.kind, e.name, renumber(e.text)) for e in other.entities.values()]
    for entity in _local_clashes_renamed(base, entities):
        base._add(entity)
    for number, line in other.metadata.items():
        base.metadata[number + offset] = renumber(line)
    for name, operands in other.named_metadata.items():
        if name == "nvvmir.version" and name in base.named_metadata:
            continue
        moved = [renumber(o) for o in operands]
        if name == "llvm.module.flags":  # the verifier refuses a flag named twice (debug info's)
            moved = _new_flags(base, moved)
        base.named_metadata.setdefault(name, []).extend(moved)


_LOCAL_GLOBAL = re.compile(r"^" + _SYMBOL + r"\s*=\s*(?:internal|private)\b")
_LOCAL_DEFINE = re.compile(r"^define\s+(?:internal|private)\b")


def _is_local(entity: Entity) -> bool:
    if entity.kind == "global":
        return bool(_LOCAL_GLOBAL.match(entity.text))
    return entity.kind == "define" and bool(_LOCAL_DEFINE.match(entity.text))


def _local_clashes_renamed(base: IRModule, entities: list[Entity]) -> list[Entity]:
    """`entities` with each internal or private symbol that `base` already defines differently
    given a fresh name, and every reference to it in `entities` rewritten.

    Such symbols belong to their module alone, so two modules may both use one name: numba-cuda
    calls every constant array `_cudapy_cmem`. Kept as one (the first), a function would read
    another module's array — a kernel reading one global numpy array and differentiating a
    function that reads another computed with the wrong numbers."""
    renames = {}
    for entity in entities:
        existing = base.entities.get(entity.name)
        if _is_local(entity) and existing is not None and existing.text != entity.text:
            renames[entity.name] = _fresh_name(base, entity.name, renames)
    if not renames:
        return entities
    reference = re.compile(r'@(?:"(' + "|".join(map(re.escape, renames)) + r')"|('
                           + "|".join(map(re.escape, renames)) + r')(?![-\w.$]))')
    rename = (lambda m: f'@"{renames[m.group(1) or m.group(2)]}"')
    return [Entity(e.kind, renames.get(e.name, e.name), reference.sub(rename, e.text)) for e in entities]


def _fresh_name(base: IRModule, name: str, taken: dict) -> str:
    n = 1
    while (candidate := f"{name}.linked{n}") in base.entities or candidate in taken.values():
        n += 1
    return candidate


_FLAG_ID = re.compile(r'!"([^"]*)"')


def _new_flags(base: IRModule, operands: list[str]) -> list[str]:
    """The module flags among `operands` whose identifier `base` does not have yet."""
    def flag_id(operand: str) -> str | None:
        line = base.metadata.get(int(operand.lstrip("!"))) if operand.lstrip("!").isdigit() else None
        m = _FLAG_ID.search(line or "")
        return m.group(1) if m else None

    seen = {flag_id(o) for o in base.named_metadata.get("llvm.module.flags", [])}
    new = []
    for operand in operands:
        key = flag_id(operand)
        if key is None or key not in seen:
            new.append(operand)
            seen.add(key)
    return new


def merge_texts(texts: list[str]) -> IRModule:
    """One module from several (numba's kernel module and its libraries)."""
    module = IRModule.parse(texts[0])
    for text in texts[1:]:
        merge_into(module, IRModule.parse(text))
    return module


def defined_functions(text: str) -> list[str]:
    return [_symbol(m) for line in text.splitlines() if (m := _DEFINE.match(line))]


def function_pointer_type(define_text: str) -> str:
    """`i32 ({double}*, double)*` from `define ... i32 @"f"({double}* %".ret", double %"x")`."""
    header = define_text.splitlines()[0]
    head, params = _split_signature(header)
    return_type = head.split()[-1]
    return f"{return_type} ({', '.join(params)})*"


_PARAM_ATTRIBUTES = {"noalias", "nocapture", "readonly", "nonnull", "signext", "zeroext", "noundef"}


def _split_signature(header: str) -> tuple[str, list[str]]:
    """Return (text before the symbol, parameter types) of a define line."""
    m = _DEFINE.match(header)
    head = header[: m.start("q") - 2 if m.group("q") else m.start("b") - 1]
    depth, start, params = 0, m.end(), []
    for i in range(m.end(), len(header)):
        ch = header[i]
        if ch in "({[<":
            depth += 1
        elif ch in ")}]>":
            if depth == 0:
                params.append(header[start:i])
                break
            depth -= 1
        elif ch == "," and depth == 0:
            params.append(header[start:i])
            start = i + 1
    types = []
    for param in params:
        words = [w for w in param.strip().split(" ") if w]
        words = [w for w in words if not w.startswith("%") and w not in _PARAM_ATTRIBUTES]
        if words:
            types.append(" ".join(words))
    return head.replace("define", "", 1).strip(), types
