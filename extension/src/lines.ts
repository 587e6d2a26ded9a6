/**
 * Source ↔ IR ↔ PTX line links, from the record's `line_map` (gpuad/compiler/lineinfo.py):
 * hovering a line highlights the lines linked to it in every code view built so far,
 * clicking one keeps them highlighted (and opens the folds that hold them), so switching
 * tabs shows the IR or PTX lines generated from a source line, and the reverse. Boxes on
 * screen beside the one under the mouse (the Map tab's columns) scroll their linked lines
 * into view, only when none of them is in view already.
 *
 * A location is a (file index, line) pair, keyed `file:line`. Everything a hover needs is
 * indexed once per artefact (lines by location, locations by line); a hover then touches
 * only the lines it highlights, never a whole module.
 */

/** `CompilationRecord.line_map`, as `lineinfo.line_map` packs it. */
export interface LineMap {
  files: string[];
  ir_before_link?: number[][];
  ir_after_link?: number[][];
  ptx?: number[][];
  sources?: { [shown: string]: [number, number] };
  derivative_lines?: { [job: string]: number[][] };
}

export type Artefact = 'ir_before_link' | 'ir_after_link' | 'ptx';

/** What a code block shows: an artefact, or a source (`kernel`, `job N`, `derivative N`). */
export type View = { artefact: Artefact } | { source: string };

function key(file: number, line: number): string {
  return `${file}:${line}`;
}

/** One artefact's runs, indexed both ways. */
class ArtefactIndex {
  readonly byKey = new Map<string, number[]>(); // location → sorted lines
  readonly byLine = new Map<number, string[]>(); // line → its locations

  constructor(runs: number[][]) {
    for (const [first, last, ...locs] of runs) {
      const keys: string[] = [];
      for (let i = 0; i + 1 < locs.length; i += 2) {
        keys.push(key(locs[i], locs[i + 1]));
      }
      for (let line = first; line <= last; line++) {
        this.byLine.set(line, keys);
        for (const k of keys) {
          let lines = this.byKey.get(k);
          if (lines === undefined) {
            this.byKey.set(k, (lines = []));
          }
          lines.push(line);
        }
      }
    }
  }
}

/** The derivative of one job: the user's line each of its lines is labelled with, and back. */
class DerivativeIndex {
  readonly userLine = new Map<number, number>();
  readonly byUserLine = new Map<number, number[]>();

  constructor(runs: number[][]) {
    for (const [first, last, user] of runs) {
      for (let line = first; line <= last; line++) {
        this.userLine.set(line, user);
        let lines = this.byUserLine.get(user);
        if (lines === undefined) {
          this.byUserLine.set(user, (lines = []));
        }
        lines.push(line);
      }
    }
  }
}

export class LineIndex {
  constructor(readonly map: LineMap) {}

  /** Whether the compilation kept any line information. */
  get present(): boolean {
    const m = this.map;
    return Boolean(m && (m.ir_before_link?.length || m.ir_after_link?.length || m.ptx?.length));
  }

  /** The locations of line `line` (1-based) of a view, with the ones they imply:
   * a derivative line's user line, and a user line's derivative lines. */
  keysOf(view: View, line: number): Set<string> {
    const keys = new Set<string>();
    if ('artefact' in view) {
      for (const k of this.artefact(view.artefact).byLine.get(line) ?? []) {
        keys.add(k);
        this.addUserLine(k, keys);
      }
      return keys;
    }
    const where = this.map.sources?.[view.source];
    if (where === undefined) {
      return keys;
    }
    const fileLine = where[1] + line - 1;
    const own = key(where[0], fileLine);
    keys.add(own);
    this.addUserLine(own, keys);
    // A line of a differentiated function: also the derivative lines generated from it.
    for (const job of this.jobsOf(view.source)) {
      const deriv = this.map.sources?.[`derivative ${job}`];
      for (const d of this.derivative(job).byUserLine.get(fileLine) ?? []) {
        if (deriv) {
          keys.add(key(deriv[0], d));
        }
      }
    }
    return keys;
  }

  /** Lines (1-based, sorted) of a view that `keys` name. */
  linesOf(view: View, keys: Set<string>): number[] {
    if ('artefact' in view) {
      const index = this.artefact(view.artefact);
      const lines = new Set<number>();
      keys.forEach(k => index.byKey.get(k)?.forEach(l => lines.add(l)));
      return Array.from(lines).sort((a, b) => a - b);
    }
    const where = this.map.sources?.[view.source];
    if (where === undefined) {
      return [];
    }
    const lines: number[] = [];
    keys.forEach(k => {
      const [file, line] = k.split(':').map(Number);
      if (file === where[0] && line >= where[1]) {
        lines.push(line - where[1] + 1);
      }
    });
    return lines.sort((a, b) => a - b);
  }

  /** Counts per artefact, for the status line. */
  counts(keys: Set<string>): { [artefact: string]: number } {
    const out: { [artefact: string]: number } = {};
    for (const a of ['ir_before_link', 'ir_after_link', 'ptx'] as Artefact[]) {
      out[a] = this.linesOf({ artefact: a }, keys).length;
    }
    return out;
  }

  private artefacts = new Map<Artefact, ArtefactIndex>();
  private derivatives = new Map<string, DerivativeIndex>();
  private jobsByShown = new Map<string, string[]>();
  private derivativeFiles: Map<number, string> | null = null;

  private artefact(name: Artefact): ArtefactIndex {
    let index = this.artefacts.get(name);
    if (index === undefined) {
      this.artefacts.set(name, (index = new ArtefactIndex(this.map[name] ?? [])));
    }
    return index;
  }

  private derivative(job: string): DerivativeIndex {
    let index = this.derivatives.get(job);
    if (index === undefined) {
      this.derivatives.set(job, (index = new DerivativeIndex(this.map.derivative_lines?.[job] ?? [])));
    }
    return index;
  }

  /** Jobs whose differentiated function is the one shown as `shown` (the same file and start). */
  private jobsOf(shown: string): string[] {
    let jobs = this.jobsByShown.get(shown);
    if (jobs === undefined) {
      const where = this.map.sources?.[shown];
      jobs = Object.keys(this.map.derivative_lines ?? {}).filter(job => {
        const fn = this.map.sources?.[`job ${job}`];
        return where !== undefined && fn !== undefined && fn[0] === where[0] && fn[1] === where[1];
      });
      this.jobsByShown.set(shown, jobs);
    }
    return jobs;
  }

  /** Adds the user's line a derivative location `k` is labelled with. */
  private addUserLine(k: string, keys: Set<string>): void {
    if (this.derivativeFiles === null) {
      this.derivativeFiles = new Map();
      for (const [shown, where] of Object.entries(this.map.sources ?? {})) {
        if (shown.startsWith('derivative ')) {
          this.derivativeFiles.set(where[0], shown.slice('derivative '.length));
        }
      }
    }
    const [file, line] = k.split(':').map(Number);
    const job = this.derivativeFiles.get(file);
    const fn = job === undefined ? undefined : this.map.sources?.[`job ${job}`];
    const user = job === undefined ? undefined : this.derivative(job).userLine.get(line);
    if (fn !== undefined && user !== undefined) {
      keys.add(key(fn[0], user));
    }
  }
}

const HIGHLIGHT = 'gpuad-hl';
const ORIGIN = 'gpuad-hl-origin';

interface Attached {
  block: HTMLElement;
  rows: (HTMLElement | undefined)[]; // row of line first + k (a block never changes once built)
  view: View;
  first: number; // the line number of the block's first line
  lit: HTMLElement[]; // the highlighted rows in line order, then the origin row
  sorted: number; // how many of `lit` are in line order (the origin row is not)
}

/** A folded part of a module, not built yet: opened when a click highlights a line in it. */
interface Folded {
  view: View;
  first: number;
  last: number;
  open: () => void;
}

/**
 * The viewer's links: every code block registers here when built; the selection (what is
 * clicked, or hovered) is drawn on all of them.
 */
export class LineLinks {
  constructor(
    readonly index: LineIndex,
    private status: (message: string) => void
  ) {}

  /** Register a built code block whose first line is line `first` of `view`. With `numbered`,
   * its rows are found by the numbers they show (the link diff: fillers, collapsed runs). */
  attach(block: HTMLElement, view: View, first: number, numbered = false): void {
    if (!this.index.present) {
      return;
    }
    const children = Array.from(block.children) as HTMLElement[];
    const rows: (HTMLElement | undefined)[] = numbered ? [] : children;
    if (numbered) {
      for (const row of children) {
        const n = lineNumber(row);
        if (n !== null && n >= first) {
          rows[n - first] = row;
        }
      }
    }
    const entry: Attached = { block, rows, view, first, lit: [], sorted: 0 };
    this.blocks.push(entry);
    block.classList.add('gpuad-linked');
    block.addEventListener('mouseover', event => {
      const line = lineNumber(event.target);
      if (line !== null && (line !== this.hovered?.line || entry !== this.hovered.entry)) {
        this.hovered = { entry, line };
        this.show(this.index.keysOf(view, line), entry, line);
        this.reveal(entry);
      }
    });
    block.addEventListener('mouseleave', () => {
      this.hovered = null;
      this.show(this.pinned, this.origin?.entry ?? null, this.origin?.line ?? null);
    });
    block.addEventListener('click', event => {
      const line = lineNumber(event.target);
      if (line === null) {
        return;
      }
      this.pinned = this.index.keysOf(view, line);
      this.origin = { entry, line };
      this.openFolded();
      this.show(this.pinned, entry, line);
      this.status(this.describe(view, line, this.pinned));
      this.reveal(entry);
    });
    this.draw(entry, this.pinned, this.origin?.entry === entry ? this.origin.line : null, new Map());
    if (entry.lit.length && this.origin?.entry !== entry) {
      // A tab or fold built after the click: once it has a layout.
      requestAnimationFrame(() => this.reveal(this.origin?.entry ?? null, block));
    }
  }

  /** Forget a block that was replaced (the link diff redrawn with all lines). */
  detach(block: HTMLElement): void {
    this.blocks = this.blocks.filter(entry => entry.block !== block);
  }

  /**
   * Scroll each box on screen that shows lit lines, none of them in view, so that its first
   * one shows; never the box of `origin` (the line under the mouse must not move), nor a box
   * that scrolls with it (the link diff's two sides). `within`: only boxes in or around it.
   */
  reveal(origin: Attached | null, within?: Element): void {
    const fixed = origin === null ? null : scrollGroup(origin.block);
    const boxes = new Map<HTMLElement, Attached[]>();
    for (const entry of this.blocks) {
      const box = entry.block.closest('.gpuad-scroll') as HTMLElement | null;
      const panel = entry.block.closest('.gpuad-panel') as HTMLElement | null;
      if (!entry.sorted || box === null || panel?.hidden || (fixed !== null && fixed.contains(box))) {
        continue;
      }
      if (box.classList.contains('gpuad-diff-before')) {
        continue; // the link diff's left side follows its right side
      }
      if (within && !within.contains(box) && !box.contains(within)) {
        continue;
      }
      let entries = boxes.get(box);
      if (entries === undefined) {
        boxes.set(box, (entries = []));
      }
      entries.push(entry);
    }
    boxes.forEach((entries, box) => scrollIntoBox(box, entries));
  }

  /** Register a folded part of a module (lines first..last of `view`) and how to open it. */
  folded(view: View, first: number, last: number, open: () => void): void {
    if (!this.index.present) {
      return;
    }
    const part = { view, first, last, open };
    if (!this.openIfLit(part)) {
      this.folds.push(part);
    }
  }

  private blocks: Attached[] = [];
  private folds: Folded[] = [];
  private pinned = new Set<string>();
  private origin: { entry: Attached; line: number } | null = null;
  private hovered: { entry: Attached; line: number } | null = null;

  private openFolded(): void {
    this.folds = this.folds.filter(part => !this.openIfLit(part));
  }

  private openIfLit(part: Folded): boolean {
    const lines = this.index.linesOf(part.view, this.pinned);
    const i = lowerBound(lines, part.first);
    if (i < lines.length && lines[i] <= part.last) {
      part.open();  // builds the block, which attaches itself
      return true;
    }
    return false;
  }

  private show(keys: Set<string>, origin: Attached | null, line: number | null): void {
    const memo = new Map<string, number[]>();  // one lookup per view, however many blocks show it
    for (const entry of this.blocks) {
      this.draw(entry, keys, entry === origin ? line : null, memo);
    }
  }

  /** Highlight `keys`' lines in one block: only the lines lit before and now are touched. */
  private draw(entry: Attached, keys: Set<string>, origin: number | null, memo: Map<string, number[]>): void {
    for (const el of entry.lit) {
      el.classList.remove(HIGHLIGHT, ORIGIN);
    }
    entry.lit = [];
    entry.sorted = 0;
    const rows = entry.rows;
    const last = entry.first + rows.length - 1;
    const name = JSON.stringify(entry.view);
    let lines = memo.get(name);
    if (lines === undefined) {
      memo.set(name, (lines = this.index.linesOf(entry.view, keys)));
    }
    for (let i = lowerBound(lines, entry.first); i < lines.length && lines[i] <= last; i++) {
      const el = rows[lines[i] - entry.first];
      if (el !== undefined) {
        el.classList.add(HIGHLIGHT);
        entry.lit.push(el);
      }
    }
    entry.sorted = entry.lit.length;
    const el = origin === null ? undefined : rows[origin - entry.first];
    if (el !== undefined) {
      el.classList.add(ORIGIN);
      entry.lit.push(el);
    }
  }

  /** `kernel, line 17` (the file's line), `differentiated function (job 1), line 9`... */
  private sourceLine(shown: string, line: number): string {
    const [kind, job] = shown.split(' ');
    const where = this.index.map.sources?.[shown];
    const fileLine = kind === 'derivative' || where === undefined ? line : where[1] + line - 1;
    const name = kind === 'job' ? `differentiated function (job ${job})` : kind === 'derivative' ? `derivative of job ${job}` : 'kernel';
    return `${name}, line ${fileLine}`;
  }

  private describe(view: View, line: number, keys: Set<string>): string {
    const what = 'artefact' in view ? `${TITLES[view.artefact]} line ${line}` : this.sourceLine(view.source, line);
    const counts = this.index.counts(keys);
    const parts = Object.entries(counts).map(([a, n]) => `${TITLES[a]}: ${n}`);
    const total = Object.values(counts).reduce((s, n) => s + n, 0);
    if (total === 0 && keys.size === 0) {
      return `${what}: the compiler kept no source line for it.`;
    }
    return `${what} → ${parts.join(', ')} lines (highlighted in their tabs)`;
  }
}

const TITLES: { [artefact: string]: string } = {
  ir_before_link: 'IR before link',
  ir_after_link: 'IR after link',
  ptx: 'PTX'
};

/** The box that scrolls a block, or the link diff's grid when both its sides scroll together. */
function scrollGroup(block: HTMLElement): Element | null {
  return block.closest('.gpuad-diff') ?? block.closest('.gpuad-scroll');
}

/**
 * Scroll `box` so that the first of its blocks' lit lines shows a third of the way down,
 * unless one of them is wholly in view already. A block's lit rows are in line order, so the
 * first below the box's top edge is found by bisection: a few layout reads, not one per line.
 */
function scrollIntoBox(box: HTMLElement, entries: Attached[]): void {
  if (box.getClientRects().length === 0) {
    return; // not drawn (a hidden column)
  }
  const top = box.getBoundingClientRect().top + box.clientTop;
  const bottom = top + box.clientHeight; // above the horizontal scrollbar
  let firstTop = Infinity;
  for (const entry of entries) {
    const lit = entry.lit;
    if (entry.block.getClientRects().length === 0) {
      continue; // in a closed fold
    }
    let lo = 0;
    let hi = entry.sorted;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (lit[mid].getBoundingClientRect().top < top) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    if (lo < entry.sorted && lit[lo].getBoundingClientRect().bottom <= bottom) {
      return; // a lit line is in view: leave the box where the reader has it
    }
    firstTop = Math.min(firstTop, lit[0].getBoundingClientRect().top);
  }
  if (firstTop !== Infinity) {
    box.scrollTop = Math.max(0, firstTop - top + box.scrollTop - box.clientHeight / 3);
  }
}

/** The line number shown in the row that holds `target`, or null. */
function lineNumber(target: EventTarget | null): number | null {
  const row = (target as HTMLElement | null)?.closest?.('.gpuad-line');
  const text = row?.querySelector('.gpuad-ln')?.textContent;
  const n = text ? Number(text) : NaN;
  return Number.isFinite(n) ? n : null;
}

function lowerBound(sorted: number[], value: number): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] < value) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}
