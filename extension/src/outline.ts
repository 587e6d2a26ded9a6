/**
 * A module's text cut into functions and the module-level text between them,
 * so each function can be folded on its own (LLVM IR: `define … {` to `}`;
 * PTX: `.entry` / `.func` headers to the closing `}`).
 */
export interface Segment {
  name: string | null; // the function's symbol; null for module-level lines
  start: number; // 0-based, inclusive
  end: number; // exclusive
}

const LLVM_DEFINE = /^define\b[^@]*@("([^"]+)"|[\w.$-]+)\s*\(/;
const PTX_FUNCTION = /^\s*(?:\.(?:visible|weak|extern)\s+)*\.(?:entry|func)\b\s*(?:\([^)]*\)\s*)?([\w$.]+)/;

export function segments(text: string, lang: 'llvm' | 'ptx'): Segment[] {
  const lines = text.split('\n');
  const out: Segment[] = [];
  let moduleStart = 0;
  let k = 0;
  while (k < lines.length) {
    const name = functionName(lines, k, lang);
    if (name === null) {
      k++;
      continue;
    }
    const end = closingBrace(lines, k);
    if (k > moduleStart) {
      out.push({ name: null, start: moduleStart, end: k });
    }
    out.push({ name, start: k, end });
    k = moduleStart = end;
  }
  if (moduleStart < lines.length && lines.slice(moduleStart).some(l => l.trim())) {
    out.push({ name: null, start: moduleStart, end: lines.length });
  }
  return out;
}

function functionName(lines: string[], k: number, lang: 'llvm' | 'ptx'): string | null {
  if (lang === 'llvm') {
    const m = LLVM_DEFINE.exec(lines[k]);
    return m ? (m[2] ?? m[1]) : null;
  }
  const m = PTX_FUNCTION.exec(lines[k]);
  if (!m) {
    return null;
  }
  // A declaration (`.extern .func … ;`) has no body.
  for (let j = k; j < Math.min(lines.length, k + 64); j++) {
    if (lines[j].trimEnd().endsWith(';') && !lines[j].includes('{')) {
      if (j === k || lines[j].trim() === ';' || /\)\s*;$/.test(lines[j])) {
        return null;
      }
    }
    if (lines[j].includes('{')) {
      return m[1];
    }
  }
  return null;
}

/** The index after the line that closes the function opened at `start` (a `}` at column 0). */
function closingBrace(lines: string[], start: number): number {
  for (let j = start + 1; j < lines.length; j++) {
    if (lines[j].startsWith('}')) {
      return j + 1;
    }
  }
  return lines.length;
}
