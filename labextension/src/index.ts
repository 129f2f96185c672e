/**
 * The JupyterLab extension of jupyter-cma: the "Claude agents" sidebar (agents, sessions, egress, webhooks and
 * setup), a status-bar item, palette commands and settings. Every request goes through ServerConnection with the
 * server's base URL (LabTransport); one live channel per page keeps the views current.
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { Signal } from '@lumino/signaling';

import { createContext, DEFAULT_MAX_ROWS, ViewContext } from './core/view.js';
import { addCommands } from './lab/commands.js';
import { NotebookEditWatcher } from './lab/notebook-watch.js';
import { OpenState } from './lab/notebook-watch-model.js';
import { CmaPanel, PANEL_ID } from './lab/panel.js';
import { CmaStatusItem } from './lab/status.js';
import { LabTransport } from './lab/transport.js';

const PLUGIN_ID = 'jupyter-cma:plugin';

/** The sidebar's icon: a small agent glyph in the theme's icon colour. */
const agentsIcon = new LabIcon({
  name: 'jupyter-cma:agents',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<path d="M12 2a1 1 0 0 1 1 1v1.07A7 7 0 0 1 19 11v5a3 3 0 0 1-3 3h-1v2h-2v-2h-2v2H9v-2H8a3 3 0 0 1-3-3v-5a7 7 0 0 1 6-6.93V3a1 1 0 0 1 1-1zm0 4a5 5 0 0 0-5 5v5a1 1 0 0 0 1 1h8a1 1 0 0 0 1-1v-5a5 5 0 0 0-5-5zm-2.5 5a1.5 1.5 0 1 1 0 3 1.5 1.5 0 0 1 0-3zm5 0a1.5 1.5 0 1 1 0 3 1.5 1.5 0 0 1 0-3z"/>' +
    '</g></svg>'
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Claude Managed Agents in JupyterLab: agents, sessions, egress, webhooks and setup, live.',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer, ISettingRegistry, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    registry: ISettingRegistry | null,
    statusBar: IStatusBar | null
  ) => {
    const transport = new LabTransport(app.serviceManager.serverSettings);
    const ctx: ViewContext = createContext(transport, {
      maxRows: DEFAULT_MAX_ROWS,
      openTerminal: async (sessionId: string) => {
        const terminal = await ctx.api.openTerminal(sessionId);
        await app.commands.execute('terminal:open', { name: terminal.name });
      },
      openNotebook: async (path: string) => {
        await app.commands.execute('docmanager:open', { path });
      }
    });

    // The document contexts of the main area's tabs showing that file (duck-typed: a context names its path and can
    // revert; several views of one notebook share one context).
    const notebookContexts = (path: string): any[] => {
      const found: any[] = [];
      for (const widget of app.shell.widgets('main')) {
        const context = (widget as any).context;
        if (context && context.path === path && typeof context.revert === 'function' && !found.includes(context)) {
          found.push(context);
        }
      }
      return found;
    };
    const revertNotebook = async (path: string): Promise<void> => {
      for (const context of notebookContexts(path)) {
        await context.ready;
        await context.revert();
      }
    };
    // Agents' notebook edits and their undoing shown in the open notebooks (reloaded, or the user asked first when a tab
    // has unsaved changes).
    new NotebookEditWatcher(ctx, {
      state: (path: string): OpenState => {
        const contexts = notebookContexts(path);
        if (!contexts.length) {
          return 'not open';
        }
        if (contexts.some(context => context.model?.collaborative === true)) {
          return 'collaborative';
        }
        return contexts.some(context => context.model?.dirty) ? 'unsaved' : 'clean';
      },
      revert: revertNotebook
    });

    const panel = new CmaPanel(ctx);
    panel.title.icon = agentsIcon;
    app.shell.add(panel, 'left', { rank: 600 });
    restorer?.add(panel, PANEL_ID);

    const showPanel = (sessionId?: string) => {
      app.shell.activateById(PANEL_ID);
      if (sessionId) {
        panel.showSession(sessionId);
      }
    };
    addCommands({ app, ctx, showPanel }, palette);

    let showStatus = true;
    const statusChanged = new Signal<object, void>(panel);
    let statusItem: CmaStatusItem | null = null;
    if (statusBar) {
      statusItem = new CmaStatusItem(ctx, () => {
        showPanel();
        if (statusItem && statusItem.node.dataset.level !== 'ok') {
          panel.showSetup();
        }
      });
      statusBar.registerStatusItem('jupyter-cma:status', {
        item: statusItem,
        align: 'left',
        rank: 100,
        isActive: () => showStatus,
        activeStateChanged: statusChanged
      });
    }

    if (registry) {
      const apply = (settings: ISettingRegistry.ISettings) => {
        showStatus = settings.get('showStatusItem').composite !== false;
        const rows = Number(settings.get('maxRows').composite);
        ctx.maxRows = Number.isFinite(rows) && rows > 0 ? rows : DEFAULT_MAX_ROWS;
        const seconds = Number(settings.get('fallbackRefreshSeconds').composite);
        statusItem?.setFallbackSeconds(Number.isFinite(seconds) ? seconds : 30);
        statusChanged.emit(undefined);
      };
      registry
        .load(PLUGIN_ID)
        .then(settings => {
          apply(settings);
          settings.changed.connect(apply);
        })
        .catch(reason => console.warn(`jupyter-cma: the settings could not be read (${reason}); the defaults apply.`));
    }

  }
};

export default plugin;
