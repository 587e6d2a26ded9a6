/**
 * The link diff side by side, from the difflib opcodes computed in Python:
 * two panes that scroll together (vertically), each half the cell's width,
 * long unchanged runs collapsed, the deferred-codegen marker highlighted on
 * the left and the linked functions on the right.
 */
import { LinkDiff } from './model';
import { lineElement, Symbols } from './code';

export interface Row {
  before: number | null; // 0-based line index, or null for a filler
  after: number | null;
  tag: string; // equal | replace | delete | insert | collapsed
  count?: number; // collapsed: how many unchanged lines
}

export function alignRows(diff: LinkDiff, context: number | null): Row[] {
  const rows: Row[] = [];
  diff.opcodes.forEach(([tag, i1, i2, j1, j2], k) => {
    if (tag === 'equal') {
      const n = i2 - i1;
      const first = k === 0;
      const last = k === diff.opcodes.length - 1;
      const head = first ? 0 : context ?? n;
      const tail = last ? 0 : context ?? n;
      if (context === null || n <= head + tail + 1) {
        for (let d = 0; d < n; d++) {
          rows.push({ before: i1 + d, after: j1 + d, tag });
        }
        return;
      }
      for (let d = 0; d < head; d++) {
        rows.push({ before: i1 + d, after: j1 + d, tag });
      }
      rows.push({ before: null, after: null, tag: 'collapsed', count: n - head - tail });
      for (let d = n - tail; d < n; d++) {
        rows.push({ before: i1 + d, after: j1 + d, tag });
      }
      return;
    }
    const n = Math.max(i2 - i1, j2 - j1);
    for (let d = 0; d < n; d++) {
      rows.push({
        before: i1 + d < i2 ? i1 + d : null,
        after: j1 + d < j2 ? j1 + d : null,
        tag
      });
    }
  });
  return rows;
}

const MARK_CLASS: { [mark: string]: string } = {
  marker: 'gpuad-mark-marker',
  linked: 'gpuad-mark-linked',
  'link-ref': 'gpuad-mark-linkref'
};

export function sideBySide(
  before: string[],
  after: string[],
  diff: LinkDiff,
  symbols: Symbols,
  context: number | null
): HTMLElement {
  const grid = document.createElement('div');
  grid.className = 'gpuad-diff';
  const left = pane(grid, 'gpuad-diff-before');
  const right = pane(grid, 'gpuad-diff-after');
  for (const row of alignRows(diff, context)) {
    if (row.tag === 'collapsed') {
      const text = `⋯ ${row.count} unchanged lines ⋯`;
      left.appendChild(lineElement(null, text, 'llvm', symbols, 'gpuad-collapsed'));
      right.appendChild(lineElement(null, text, 'llvm', symbols, 'gpuad-collapsed'));
      continue;
    }
    left.appendChild(side(before, row.before, diff.before_marks, row.tag, 'gpuad-del', symbols));
    right.appendChild(side(after, row.after, diff.after_marks, row.tag, 'gpuad-ins', symbols));
  }
  syncScroll(left, right);
  return grid;
}

function pane(grid: HTMLElement, cls: string): HTMLElement {
  const p = document.createElement('div');
  p.className = `gpuad-diff-pane gpuad-scroll ${cls}`;
  const inner = document.createElement('div');
  inner.className = 'gpuad-code';
  p.appendChild(inner);
  grid.appendChild(p);
  return inner;
}

function side(
  lines: string[],
  index: number | null,
  marks: { [line: string]: string },
  tag: string,
  changed: string,
  symbols: Symbols
): HTMLElement {
  if (index === null) {
    return lineElement(null, '', 'llvm', symbols, 'gpuad-filler');
  }
  const classes = [];
  if (tag !== 'equal') {
    classes.push(changed);
  }
  const mark = marks[String(index)];
  if (mark && MARK_CLASS[mark]) {
    classes.push(MARK_CLASS[mark]);
  }
  return lineElement(index + 1, lines[index] ?? '', 'llvm', symbols, classes.join(' '));
}

/** Scrolling one pane scrolls the other to the same place (rows have equal heights). */
function syncScroll(leftCode: HTMLElement, rightCode: HTMLElement): void {
  const a = leftCode.parentElement as HTMLElement;
  const b = rightCode.parentElement as HTMLElement;
  let driver: HTMLElement | null = null;
  const follow = (from: HTMLElement, to: HTMLElement) => () => {
    if (driver !== null && driver !== from) {
      return;
    }
    driver = from;
    to.scrollTop = from.scrollTop;
    to.scrollLeft = from.scrollLeft;
    requestAnimationFrame(() => (driver = null));
  };
  a.addEventListener('scroll', follow(a, b));
  b.addEventListener('scroll', follow(b, a));
}
