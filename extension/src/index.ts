/**
 * gpuad-jupyterlab: renders `application/vnd.gpuad.compilation+json`, the JSON
 * form of a gpuad compilation record, as the compilation viewer. Display
 * bundles of gpuad carry it next to text/html and text/plain, so a saved
 * notebook shows the viewer without a kernel.
 */
import { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { Widget } from '@lumino/widgets';

import { MIME_TYPE, PackedCompilation, unpackCompilation } from './model';
import { renderCompilation } from './viewer';

export class CompilationRenderer extends Widget implements IRenderMime.IRenderer {
  constructor(options: IRenderMime.IRendererOptions) {
    super();
    this._mimeType = options.mimeType;
    this.addClass('gpuad-viewer-widget');
  }

  async renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    const stored = model.data[this._mimeType] as unknown as PackedCompilation;
    try {
      renderCompilation(this.node, await unpackCompilation(stored));
    } catch (error) {
      this.node.textContent = `gpuad viewer: cannot draw this compilation (${error})`;
    }
  }

  private _mimeType: string;
}

export const rendererFactory: IRenderMime.IRendererFactory = {
  // The viewer sets text only (never HTML from the data), so it is safe in untrusted notebooks.
  safe: true,
  mimeTypes: [MIME_TYPE],
  createRenderer: options => new CompilationRenderer(options)
};

const extension: IRenderMime.IExtension = {
  id: 'gpuad-jupyterlab:compilation',
  rendererFactory,
  // Ahead of text/html, which the same bundle carries for front ends without this extension.
  rank: 0,
  dataType: 'json'
};

export default extension;
