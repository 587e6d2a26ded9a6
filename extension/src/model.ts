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
