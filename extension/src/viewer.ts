/**
 * The compilation viewer: a header (kernel, target, counts), the stage
 * timings, and one tab per stage. Tab bodies are built when first opened,
 * and function bodies when first unfolded, so a large module stays quick.
 */
import { codeBlock, Language, symbolElement, Symbols } from './code';
import { sideBySide } from './diff';
import { Artefact, LineIndex, LineLinks, LineMap, View } from './lines';
import { Compilation, formatSeconds, Job, plural, STAGE_TITLES } from './model';
import { segments } from './outline';

// Modules up to this many lines open every function; longer ones start folded.
const UNFOLD_LIMIT = 400;
const DIFF_CONTEXT = 3;
// The Map tab: source, IR after link and PTX side by side (not a stage of the record).
const MAP = 'map';
const MAP_TITLE = 'Map';
const MAP_COLUMNS: { [stage: string]: string } = { 'ir-after': 'IR after link', ptx: 'PTX' };
// Widths in shares of the row: IR lines are the longest.
const MAP_WIDTHS: { [stage: string]: number } = { source: 1, 'ir-after': 1.2, ptx: 1 };

export function renderCompilation(node: HTMLElement, data: Compilation): void {
  node.textContent = '';
  node.classList.add('gpuad-viewer');
  const symbols: Symbols = data.symbols ?? {};
  node.appendChild(header(data));
  node.appendChild(timings(data.timings));
  const keys = (data.stages ?? Object.keys(STAGE_TITLES)).filter(k => k in STAGE_TITLES);
  if (keys.length === 0) {
    return;
  }
  const bar = el('div', 'gpuad-tabbar');
  bar.setAttribute('role', 'tablist');
  const body = el('div', 'gpuad-tabbody');
  // The record's line map (gpuad/compiler/lineinfo.py); absent from records made before it.
  const lineMap = (data as Compilation & { line_map?: LineMap }).line_map;
  const index = new LineIndex(lineMap ?? { files: [] });
  if (index.present && keys.includes('source') && mapColumns(data, keys).length) {
    keys.splice(keys.indexOf('source') + 1, 0, MAP);
  }
  const status = el('div', 'gpuad-note gpuad-linkinfo', linkHelp(index));
  const links = new LineLinks(index, message => (status.textContent = message));
  node.appendChild(bar);
  node.appendChild(status);
  node.appendChild(body);
  const built: { [key: string]: HTMLElement } = {};
  const select = (key: string) => {
    for (const button of Array.from(bar.children)) {
      button.classList.toggle('gpuad-tab-active', (button as HTMLElement).dataset.stage === key);
      button.setAttribute('aria-selected', String((button as HTMLElement).dataset.stage === key));
    }
    for (const panel of Object.values(built)) {
      panel.hidden = true;
    }
    if (!built[key]) {
      built[key] = el('div', `gpuad-panel gpuad-stage-${key}`);
      built[key].appendChild(key === MAP ? sourceMap(data, keys, symbols, links) : stageBody(key, data, symbols, links));
      body.appendChild(built[key]);
    }
    built[key].hidden = false;
    links.reveal(null, built[key]); // the lines a click lit while this tab was hidden
  };
  for (const key of keys) {
    const button = el('button', 'gpuad-tab', key === MAP ? MAP_TITLE : STAGE_TITLES[key]);
    if (key === MAP) {
      button.title = 'Source, IR after link and PTX side by side, their lines linked';
    }
    button.dataset.stage = key;
    button.setAttribute('role', 'tab');
    button.addEventListener('click', () => select(key));
    bar.appendChild(button);
  }
  const names = el('label', 'gpuad-mangled-toggle');
  const box = document.createElement('input');
  box.type = 'checkbox';
  box.addEventListener('change', () => node.classList.toggle('gpuad-show-mangled', box.checked));
  names.appendChild(box);
  names.appendChild(document.createTextNode(' mangled names'));
  bar.appendChild(names);
  select(keys[0]);
}

function header(d: Compilation): HTMLElement {
  const h = el('div', 'gpuad-header');
  h.appendChild(el('b', '', 'gpuad kernel '));
  h.appendChild(el('code', 'gpuad-kernel-name', d.kernel_name));
  const ptxLines = d.ptx ? d.ptx.split('\n').length : 0;
  const counts = [
    plural(d.overlays.length, 'overlay'),
    plural(d.jobs.length, 'deferred job'),
    `${plural(d.linked_functions.length, 'function')} linked`,
    d.ptx ? plural(ptxLines, 'PTX line') : 'no PTX'
  ];
  if (d.local_memory_bytes) {
    counts.push(`${d.local_memory_bytes} B local memory per thread`);
  }
  h.appendChild(
    el('span', 'gpuad-muted', ` [${d.target}, ${d.arch}] (${d.signature.join(', ')}) — ${counts.join(', ')}`)
  );
  return h;
}

function timings(t: { [stage: string]: number }): HTMLElement {
  const strip = el('div', 'gpuad-timings');
  const stages = Object.entries(t ?? {});
  if (stages.length === 0) {
    strip.textContent = 'No timings recorded.';
    return strip;
  }
  for (const [stage, seconds] of stages) {
    const item = el('span', 'gpuad-timing');
    item.appendChild(el('span', 'gpuad-muted', stage + ' '));
    item.appendChild(el('span', '', formatSeconds(seconds)));
    strip.appendChild(item);
  }
  const total = el('span', 'gpuad-timing gpuad-timing-total');
  total.appendChild(el('span', 'gpuad-muted', 'total '));
  total.appendChild(el('b', '', formatSeconds(stages.reduce((s, [, v]) => s + v, 0))));
  strip.appendChild(total);
  return strip;
}

/** What the line under the tabs says before a line is clicked. */
function linkHelp(index: LineIndex): string {
  if (index.present) {
    return 'Hover or click a line of the source, a derivative, the IR or the PTX: the lines linked to it light up in every tab.';
  }
  return 'No source line information: this compilation kept no debug locations (made before gpuad recorded them, or by a target that keeps none).';
}

function stageBody(key: string, d: Compilation, symbols: Symbols, links: LineLinks): HTMLElement {
  switch (key) {
    case 'source':
      return sources(d, symbols, links);
    case 'overlays':
      return overlays(d);
    case 'jobs':
      return jobs(d, symbols);
    case 'derivatives':
      return derivatives(d, symbols, links);
    case 'ir-before':
      return module(d.ir_before_link, 'llvm', symbols, links, 'ir_before_link');
    case 'ir-after':
      return module(d.ir_after_link, 'llvm', symbols, links, 'ir_after_link');
    case 'diff':
      return linkDiff(d, symbols, links);
    case 'ptx':
      return module(d.ptx, 'ptx', symbols, links, 'ptx');
  }
  return note(`unknown stage ${key}`);
}

/** The kernel and each function it differentiates. */
function sources(d: Compilation, symbols: Symbols, links: LineLinks): HTMLElement {
  const box = el('div', 'gpuad-scroll');
  sourceFolds(d, symbols, links).forEach(f => box.appendChild(f));
  return box;
}

function sourceFolds(d: Compilation, symbols: Symbols, links: LineLinks): HTMLElement[] {
  const folds = [
    fold(titleText('kernel ', d.kernel_name), true, () => python(d.source, symbols, links, { source: 'kernel' }))
  ];
  const seen = new Set<string>();
  for (const job of d.jobs) {
    if (seen.has(job.function)) {
      continue;
    }
    seen.add(job.function);
    const title = titleText('differentiated ', job.function, ` (job ${job.id}: ${job.mode})`);
    folds.push(
      fold(title, true, () =>
        job.source
          ? python(job.source, symbols, links, { source: `job ${job.id}` })
          : note('Its source was not found (inspect.getsource failed).')
      )
    );
  }
  return folds;
}

function derivatives(d: Compilation, symbols: Symbols, links: LineLinks): HTMLElement {
  const folds = derivativeFolds(d, symbols, links, '');
  if (folds.length === 0) {
    return note('No derivative source was generated.');
  }
  const box = el('div', 'gpuad-scroll');
  folds.forEach(f => box.appendChild(f));
  return box;
}

function derivativeFolds(d: Compilation, symbols: Symbols, links: LineLinks, prefix: string): HTMLElement[] {
  const ids = Object.keys(d.adjoint_sources ?? {}).sort((a, b) => Number(a) - Number(b));
  const byId = new Map<string, Job>(d.jobs.map(j => [String(j.id), j]));
  return ids.map(id => {
    const job = byId.get(id);
    const title = titleText(`${prefix}job ${id}`, job ? `: ${job.mode} of ` : '', job ? job.function : '');
    return fold(title, true, () => python(d.adjoint_sources[id], symbols, links, { source: `derivative ${id}` }));
  });
}

/** The Map tab's columns after the source: the module stages shown that the record has. */
function mapColumns(d: Compilation, keys: string[]): string[] {
  const text: { [stage: string]: string } = { 'ir-after': d.ir_after_link, ptx: d.ptx };
  return Object.keys(MAP_COLUMNS).filter(stage => keys.includes(stage) && Boolean(text[stage]));
}

/**
 * The Map tab, as Compiler Explorer shows source and assembly: the source (kernel, the
 * functions it differentiates, their derivatives), IR after link and PTX in columns side by
 * side, each scrolling on its own; a line hovered or clicked in one lights its linked lines in
 * the others, which scroll to them when none is in view. Built when first opened; a module's
 * functions are built when unfolded (by hand, or by a click that lights a line in them).
 */
function sourceMap(d: Compilation, keys: string[], symbols: Symbols, links: LineLinks): HTMLElement {
  const map = el('div', 'gpuad-map');
  const bar = el('div', 'gpuad-map-bar gpuad-note');
  bar.appendChild(el('span', '', 'Columns:'));
  const grid = el('div', 'gpuad-map-grid');
  const columns: HTMLElement[] = [];
  const layout = () => {
    const shown = columns.filter(c => !c.hidden).map(c => `minmax(0, ${MAP_WIDTHS[c.dataset.stage ?? '']}fr)`);
    grid.style.gridTemplateColumns = shown.join(' ');
  };
  const column = (stage: string, title: string, build: () => HTMLElement) => {
    const c = el('div', `gpuad-map-column gpuad-map-${stage}`);
    c.dataset.stage = stage;
    c.appendChild(el('div', 'gpuad-map-heading', title));
    const content = build();
    content.classList.add('gpuad-scroll', 'gpuad-map-box');
    c.appendChild(content);
    grid.appendChild(c);
    columns.push(c);
    if (stage !== 'source') {
      const label = el('label', '');
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.checked = true;
      box.addEventListener('change', () => {
        c.hidden = !box.checked;
        layout();
      });
      label.appendChild(box);
      label.appendChild(document.createTextNode(` ${title}`));
      bar.appendChild(label);
    }
  };
  column('source', 'Source', () => {
    const box = el('div', '');
    sourceFolds(d, symbols, links).forEach(f => box.appendChild(f));
    derivativeFolds(d, symbols, links, 'derivative: ').forEach(f => box.appendChild(f));
    return box;
  });
  const modules: { [stage: string]: () => HTMLElement } = {
    'ir-after': () => module(d.ir_after_link, 'llvm', symbols, links, 'ir_after_link'),
    ptx: () => module(d.ptx, 'ptx', symbols, links, 'ptx')
  };
  for (const stage of mapColumns(d, keys)) {
    column(stage, MAP_COLUMNS[stage], modules[stage]);
  }
  layout();
  map.appendChild(bar);
  map.appendChild(grid);
  return map;
}

function python(text: string, symbols: Symbols, links: LineLinks, view: View): HTMLElement {
  const block = codeBlock(text.replace(/\n$/, '').split('\n'), 'python', symbols);
  links.attach(block, view, 1);
  return block;
}

function overlays(d: Compilation): HTMLElement {
  if (d.overlays.length === 0) {
    return note('No call was overlaid: every call resolved to its original function.');
  }
  return table(
    ['call site', 'original', 'replacement', 'function'],
    d.overlays.map(o => [site(d, o.call_site), code(o.original), code(o.replacement), code(o.function)])
  );
}

function jobs(d: Compilation, symbols: Symbols): HTMLElement {
  if (d.jobs.length === 0) {
    return note('No deferred jobs: the kernel makes no autodiff call.');
  }
  return table(
    ['id', 'function', 'mode', 'activities', 'types', 'symbol', 'call sites', 'parent'],
    d.jobs.map(j => [
      text(String(j.id)),
      code(j.function),
      text(j.mode),
      text(j.activities.join(', ')),
      code(j.argument_types.join(', ')),
      symbol(j.symbol, symbols),
      listOf(j.call_sites.map(s => site(d, s))),
      text(j.parent === null ? '' : String(j.parent))
    ])
  );
}

function module(
  textIn: string,
  lang: Language,
  symbols: Symbols,
  links: LineLinks,
  artefact: Artefact
): HTMLElement {
  if (!textIn) {
    return note('Not produced by this compilation.');
  }
  const lines = textIn.replace(/\n$/, '').split('\n');
  const parts = segments(lines.join('\n'), lang as 'llvm' | 'ptx');
  const unfold = lines.length <= UNFOLD_LIMIT;
  const box = el('div', 'gpuad-scroll gpuad-module');
  box.appendChild(
    note(`${plural(lines.length, 'line')}, ${plural(parts.filter(p => p.name).length, 'function')}`)
  );
  for (const part of parts) {
    const n = part.end - part.start;
    const view: View = { artefact };
    const body = () => {
      const block = codeBlock(lines.slice(part.start, part.end), lang, symbols, part.start + 1);
      links.attach(block, view, part.start + 1);
      return block;
    };
    let partFold: HTMLDetailsElement;
    if (part.name === null) {
      partFold = fold(titleText('module ', '', `lines ${part.start + 1}–${part.end}`), false, body);
    } else {
      const title = el('span', 'gpuad-fold-title');
      title.appendChild(symbol(part.name, symbols));
      title.appendChild(el('span', 'gpuad-muted', `  ${plural(n, 'line')}`));
      partFold = fold(title, unfold, body);
    }
    box.appendChild(partFold);
    if (!partFold.open) {
      links.folded(view, part.start + 1, part.end, () => (partFold.open = true));
    }
  }
  return box;
}

function linkDiff(d: Compilation, symbols: Symbols, links: LineLinks): HTMLElement {
  if (!d.link_diff || !(d.ir_before_link || d.ir_after_link)) {
    return note('No IR to compare.');
  }
  const diff = d.link_diff;
  const before = d.ir_before_link.split('\n');
  const after = d.ir_after_link.split('\n');
  const box = el('div', 'gpuad-diffbox');
  const summary = el('div', 'gpuad-note');
  const removed = diff.opcodes.reduce((s, [t, i1, i2]) => s + (t === 'equal' ? 0 : i2 - i1), 0);
  const added = diff.opcodes.reduce((s, [t, , , j1, j2]) => s + (t === 'equal' ? 0 : j2 - j1), 0);
  summary.appendChild(el('span', '', `${removed} lines removed, ${added} added; functions linked: `));
  diff.linked_functions.forEach((f, k) => {
    if (k) {
      summary.appendChild(document.createTextNode(', '));
    }
    summary.appendChild(symbol(f, symbols));
  });
  if (diff.linked_functions.length === 0) {
    summary.appendChild(document.createTextNode('none'));
  }
  box.appendChild(summary);
  const legend = el('div', 'gpuad-legend');
  legend.appendChild(el('span', 'gpuad-mark-marker', 'deferred-codegen marker'));
  legend.appendChild(el('span', 'gpuad-mark-linked', 'linked function'));
  legend.appendChild(el('span', 'gpuad-mark-linkref', 'refers to a linked function'));
  const all = el('label', '');
  const box2 = document.createElement('input');
  box2.type = 'checkbox';
  all.appendChild(box2);
  all.appendChild(document.createTextNode(' all lines'));
  legend.appendChild(all);
  box.appendChild(legend);
  const heads = el('div', 'gpuad-diff-heads');
  heads.appendChild(el('div', '', 'IR before link'));
  heads.appendChild(el('div', '', 'IR after link'));
  box.appendChild(heads);
  // Both sides are linked to the source like the IR tabs; a row is found by the number it shows.
  const sides = (g: HTMLElement) => Array.from(g.querySelectorAll(':scope > .gpuad-diff-pane > .gpuad-code'));
  const attach = (g: HTMLElement) => {
    const [left, right] = sides(g) as HTMLElement[];
    links.attach(left, { artefact: 'ir_before_link' }, 1, true);
    links.attach(right, { artefact: 'ir_after_link' }, 1, true);
    return g;
  };
  let grid = attach(sideBySide(before, after, diff, symbols, DIFF_CONTEXT));
  box.appendChild(grid);
  box2.addEventListener('change', () => {
    const next = attach(sideBySide(before, after, diff, symbols, box2.checked ? null : DIFF_CONTEXT));
    sides(grid).forEach(side => links.detach(side as HTMLElement));
    box.replaceChild(next, grid);
    grid = next;
  });
  return box;
}

// ------------------------------------------------------------------ DOM helpers

function el(tag: string, cls: string, textContent?: string): HTMLElement {
  const e = document.createElement(tag);
  if (cls) {
    e.className = cls;
  }
  if (textContent !== undefined) {
    e.textContent = textContent;
  }
  return e;
}

function note(message: string): HTMLElement {
  return el('div', 'gpuad-note', message);
}

function text(value: string): HTMLElement {
  return el('span', '', value);
}

function code(value: string): HTMLElement {
  return el('code', '', value);
}

function listOf(items: HTMLElement[]): HTMLElement {
  const box = el('span', '');
  items.forEach((item, k) => {
    if (k) {
      box.appendChild(document.createTextNode(', '));
    }
    box.appendChild(item);
  });
  return box;
}

/** A call site `file:line` as the reader knows it (`cell [3], line 5`), the full form on hover. */
function site(d: Compilation, callSite: string): HTMLElement {
  const short = d.call_sites?.[callSite] ?? callSite;
  const c = el('code', 'gpuad-site', short);
  c.title = callSite;
  return c;
}

function symbol(mangled: string, symbols: Symbols): HTMLElement {
  const readable = symbols[mangled];
  if (readable === undefined) {
    const c = el('code', 'gpuad-sym', mangled);
    c.title = mangled;
    return c;
  }
  const s = symbolElement(mangled, readable);
  s.classList.add('gpuad-code-inline');
  return s;
}

function titleText(prefix: string, name: string, suffix = ''): HTMLElement {
  const t = el('span', 'gpuad-fold-title');
  t.appendChild(el('span', 'gpuad-muted', prefix));
  t.appendChild(el('code', '', name));
  if (suffix) {
    t.appendChild(el('span', 'gpuad-muted', suffix));
  }
  return t;
}

/** A foldable section whose body is built the first time it opens. */
function fold(title: HTMLElement, open: boolean, body: () => HTMLElement): HTMLDetailsElement {
  const details = document.createElement('details');
  details.className = 'gpuad-fold';
  const summary = document.createElement('summary');
  summary.appendChild(title);
  details.appendChild(summary);
  let built = false;
  const build = () => {
    if (!built && details.open) {
      built = true;
      details.appendChild(body());
    }
  };
  details.addEventListener('toggle', build);
  details.open = open;
  build();
  return details;
}

function table(headers: string[], rows: HTMLElement[][]): HTMLElement {
  const wrap = el('div', 'gpuad-scroll');
  const t = el('table', 'gpuad-table');
  const head = el('tr', '');
  headers.forEach(h => head.appendChild(el('th', '', h)));
  t.appendChild(head);
  for (const row of rows) {
    const tr = el('tr', '');
    for (const cell of row) {
      const td = el('td', '');
      td.appendChild(cell);
      tr.appendChild(td);
    }
    t.appendChild(tr);
  }
  wrap.appendChild(t);
  return wrap;
}
