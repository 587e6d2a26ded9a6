/**
 * The JSON a gpuad display bundle carries under MIME_TYPE: the compilation
 * record's `to_dict()` plus what `CompilationView.viewer_data()` derives in
 * Python (stages, readable symbols, call sites, the link diff's alignment).
 */
export const MIME_TYPE = 'application/vnd.gpuad.compilation+json';

export interface Overlay {
  call_site: string;
  original: string;
  replacement: string;
  function: string;
}

export interface Job {
  id: number;
  function: string;
  mode: string;
  activities: string[];
  argument_types: string[];
  symbol: string;
  call_sites: string[];
  parent: number | null;
  own_shadows: string[];
  source?: string;
}

export type Opcode = [string, number, number, number, number];

export interface LinkDiff {
  opcodes: Opcode[];
  before_marks: { [line: string]: string };
  after_marks: { [line: string]: string };
  linked_functions: string[];
}

export interface Compilation {
  format: string;
  version: number;
  kernel_name: string;
  target: string;
  arch: string;
  signature: string[];
  source: string;
  overlays: Overlay[];
  jobs: Job[];
  adjoint_sources: { [id: string]: string };
  ir_before_link: string;
  ir_after_link: string;
  ptx: string;
  timings: { [stage: string]: number };
  linked_functions: string[];
  local_memory_bytes?: number;
  stages?: string[];
  symbols?: { [mangled: string]: string };
  call_sites?: { [site: string]: string };
  link_diff?: LinkDiff;
}

/** Tab titles of the stage keys of gpuad.notebook.views.STAGES ("timings" is the header strip). */
export const STAGE_TITLES: { [key: string]: string } = {
  source: 'Source',
  overlays: 'Overlays',
  jobs: 'Jobs',
  derivatives: 'Derivative source',
  'ir-before': 'IR before link',
  'ir-after': 'IR after link',
  diff: 'Link diff',
  ptx: 'PTX'
};

export function plural(count: number, word: string, words?: string): string {
  return `${count} ${count === 1 ? word : words ?? word + 's'}`;
}

export function formatSeconds(seconds: number): string {
  if (seconds >= 1) {
    return `${seconds.toFixed(2)} s`;
  }
  if (seconds >= 1e-3) {
    return `${(seconds * 1e3).toPrecision(3)} ms`;
  }
  return `${(seconds * 1e6).toPrecision(3)} µs`;
}

/**
 * What a display bundle stores (gpuad.notebook.views.pack): the fields that name the
 * compilation in plain JSON, everything else gzip-compressed and base64-encoded in
 * `packed.data`, with IR after link given as its changes from IR before link.
 */
export interface PackedCompilation {
  format: string;
  version: number;
  kernel_name: string;
  packed?: { encoding: string; data: string };
  [key: string]: unknown;
}

export const PACKING = 'gzip+base64';

interface AfterLinkChanges {
  lines: string[][];
  final_newline: boolean;
}

/** The full Compilation from what a bundle stores (a bundle without `packed` is returned as it is). */
export async function unpackCompilation(stored: PackedCompilation): Promise<Compilation> {
  const { packed, ...plain } = stored;
  if (packed === undefined) {
    return stored as unknown as Compilation;
  }
  if (packed.encoding !== PACKING) {
    throw new Error(`unknown packing ${packed.encoding} (gpuad writes ${PACKING})`);
  }
  const body = JSON.parse(await gunzip(packed.data));
  const changes = body.ir_after_link_changes as AfterLinkChanges | undefined;
  if (changes !== undefined) {
    delete body.ir_after_link_changes;
    body.ir_after_link = rebuildAfterLink(body.ir_before_link, body.link_diff.opcodes, changes);
  }
  return { ...plain, ...body } as Compilation;
}

/** IR after link: IR before link's lines where the opcodes say equal, the stored lines elsewhere. */
export function rebuildAfterLink(before: string, opcodes: Opcode[], changes: AfterLinkChanges): string {
  const old = (before.endsWith('\n') ? before.slice(0, -1) : before).split('\n');
  const lines: string[] = [];
  let k = 0;
  for (const [tag, i1, i2] of opcodes) {
    lines.push(...(tag === 'equal' ? old.slice(i1, i2) : changes.lines[k++]));
  }
  return lines.join('\n') + (changes.final_newline ? '\n' : '');
}

async function gunzip(base64: string): Promise<string> {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) {
    bytes[i] = binary.charCodeAt(i);
  }
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
  return new Response(stream).text();
}
