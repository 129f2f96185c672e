/**
 * The JupyterLab Transport: every request through ServerConnection.makeRequest with the app's server settings,
 * so the base URL (e.g. /user/<name>/), the token and the XSRF header are JupyterLab's own.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { apiPath, errorFromResponse, networkError, readBody, RequestOptions, Transport } from '../core/transport.js';

export class LabTransport implements Transport {
  readonly baseUrl: string;

  constructor(readonly settings: ServerConnection.ISettings) {
    this.baseUrl = settings.baseUrl;
  }

  async fetchRaw(path: string, init: RequestInit = {}): Promise<Response> {
    const url = URLExt.join(this.settings.baseUrl, 'cma/api', path.replace(/^\/+/, ''));
    try {
      return await ServerConnection.makeRequest(url, { cache: 'no-store', ...init }, this.settings);
    } catch (error) {
      throw networkError(error);
    }
  }

  async request(path: string, init: RequestOptions = {}): Promise<any> {
    const headers: Record<string, string> = { Accept: 'application/json' };
    let body: string | undefined;
    if (init.body !== undefined) {
      body = JSON.stringify(init.body);
      headers['Content-Type'] = 'application/json';
    }
    const response = await this.fetchRaw(apiPath(path, init.query), { method: (init.method ?? 'GET').toUpperCase(), headers, body });
    if (!response.ok) {
      throw await errorFromResponse(response);
    }
    return readBody(response);
  }

  liveUrl(): string {
    const url = URLExt.join(this.settings.wsUrl, 'cma/api/live');
    // As JupyterLab's own sockets: the token goes in the URL only when the cookie cannot authenticate.
    return this.settings.appendToken && this.settings.token ? `${url}?token=${encodeURIComponent(this.settings.token)}` : url;
  }
}
