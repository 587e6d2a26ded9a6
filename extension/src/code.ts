/**
 * Code lines as DOM: simple token highlighting (Python, LLVM IR, PTX), line
 * numbers, and mangled numba symbols shown by their readable name with the
 * mangled one on hover. Only textContent is set: the record's text is never
 * parsed as HTML, which is why the renderer can be `safe`.
 */
export type Language = 'python' | 'llvm' | 'ptx';

const PY_KEYWORDS = new Set(
  ('False None True and as assert break class continue def del elif else except finally for from ' +
    'global if import in is lambda nonlocal not or pass raise return try while with yield').split(' ')
);
const LLVM_KEYWORDS = new Set(
  ('define declare call ret br switch phi select load store alloca getelementptr inbounds icmp fcmp ' +
    'add sub mul fadd fsub fmul fdiv sdiv udiv srem urem shl lshr ashr and or xor zext sext trunc ' +
    'fptosi sitofp uitofp fptoui bitcast inttoptr ptrtoint fpext fptrunc extractvalue insertvalue ' +
    'global constant private internal external linkonce_odr weak unreachable label to nsw nuw ' +
    'attributes align tail noalias nocapture readonly readnone dso_local local_unnamed_addr ' +
    'unnamed_addr target datalayout triple true false null undef zeroinitializer atomicrmw cmpxchg ' +
    'eq ne slt sle sgt sge ult ule ugt uge oeq one olt ole ogt oge ueq une uno ord fast').split(' ')
);
const LLVM_TYPE = /^(i\d+|double|float|half|void|ptr|metadata)\**$/;

// One alternation per language; the group that matched names the token class.
const PATTERNS: { [lang in Language]: RegExp } = {
  python: /(#.*$)|("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(\b\d+(?:\.\d*)?(?:e[+-]?\d+)?\b)|([A-Za-z_]\w*)/g,
  llvm: /(;.*$)|(c?"(?:[^"\\]|\\.)*")|([@%]"[^"]*"|[@%][\w.$-]+)|(![\w.]+)|(\b-?\d+(?:\.\d*)?(?:e[+-]?\d+)?\b)|([A-Za-z_][\w.]*\**)/g,
  ptx: /(\/\/.*$)|("(?:[^"\\]|\\.)*")|(%[\w]+|\$[\w$]+)|(\.[A-Za-z_][\w]*)|(\b-?(?:0[xdfDF][0-9a-fA-F]+|\d+(?:\.\d*)?)\b)|([A-Za-z_][\w$]*)/g
};

const MANGLED = /_ZN[A-Za-z0-9_$.]+/g;

export interface Symbols {
  [mangled: string]: string;
}

/** Append `text` (one line) to `parent` as highlighted spans. */
export function appendTokens(parent: HTMLElement, text: string, lang: Language, symbols: Symbols): void {
  const pattern = PATTERNS[lang];
  pattern.lastIndex = 0;
  let last = 0;
  let match: RegExpExecArray | null;
  while ((match = pattern.exec(text)) !== null) {
    if (match[0].length === 0) {
      pattern.lastIndex++;
      continue;
    }
    if (match.index > last) {
      appendSymbols(parent, text.slice(last, match.index), '', symbols);
    }
    appendSymbols(parent, match[0], tokenClass(lang, match), symbols);
    last = match.index + match[0].length;
  }
  if (last < text.length) {
    appendSymbols(parent, text.slice(last), '', symbols);
  }
}

function tokenClass(lang: Language, m: RegExpExecArray): string {
  const word = m[0];
  if (lang === 'python') {
    return m[1] ? 'comment' : m[2] ? 'string' : m[3] ? 'number' : PY_KEYWORDS.has(word) ? 'keyword' : '';
  }
  if (lang === 'llvm') {
    if (m[1]) {
      return 'comment';
    }
    if (m[2]) {
      return 'string';
    }
    if (m[3]) {
      return word[0] === '@' ? 'global' : 'local';
    }
    if (m[4]) {
      return 'meta';
    }
    if (m[5]) {
      return 'number';
    }
    return LLVM_TYPE.test(word) ? 'type' : LLVM_KEYWORDS.has(word) ? 'keyword' : '';
  }
  return m[1] ? 'comment' : m[2] ? 'string' : m[3] ? 'local' : m[4] ? 'keyword' : m[5] ? 'number' : '';
}

/** A token, its mangled symbols shown by readable name (both kept; CSS picks one). */
function appendSymbols(parent: HTMLElement, text: string, cls: string, symbols: Symbols): void {
  MANGLED.lastIndex = 0;
  let last = 0;
  let match: RegExpExecArray | null;
  const target = cls ? span(parent, cls ? `gpuad-tok-${cls}` : '') : parent;
  while ((match = MANGLED.exec(text)) !== null) {
    const readable = symbols[match[0]];
    if (readable === undefined) {
      continue;
    }
    if (match.index > last) {
      target.appendChild(document.createTextNode(text.slice(last, match.index)));
    }
    target.appendChild(symbolElement(match[0], readable));
    last = match.index + match[0].length;
  }
  target.appendChild(document.createTextNode(text.slice(last)));
}

/** The readable name, the mangled one in its title (and shown instead when the view asks). */
export function symbolElement(mangled: string, readable: string): HTMLElement {
  const outer = document.createElement('span');
  outer.className = 'gpuad-sym';
  outer.title = mangled;
  span(outer, 'gpuad-sym-readable').textContent = readable;
  span(outer, 'gpuad-sym-mangled').textContent = mangled;
  return outer;
}

function span(parent: HTMLElement, cls: string): HTMLElement {
  const s = document.createElement('span');
  if (cls) {
    s.className = cls;
  }
  parent.appendChild(s);
  return s;
}

/** One code line: its number and its highlighted text. */
export function lineElement(
  number: number | null,
  text: string,
  lang: Language,
  symbols: Symbols,
  cls = ''
): HTMLElement {
  const line = document.createElement('div');
  line.className = 'gpuad-line' + (cls ? ' ' + cls : '');
  span(line, 'gpuad-ln').textContent = number === null ? '' : String(number);
  const body = span(line, 'gpuad-text');
  appendTokens(body, text, lang, symbols);
  if (!text) {
    body.textContent = ' ';
  }
  return line;
}

/** A block of code lines numbered from `first` (1-based). */
export function codeBlock(lines: string[], lang: Language, symbols: Symbols, first = 1): HTMLElement {
  const block = document.createElement('div');
  block.className = 'gpuad-code';
  lines.forEach((text, k) => block.appendChild(lineElement(first + k, text, lang, symbols)));
  return block;
}
