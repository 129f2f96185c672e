/**
 * The palette commands (category "Claude agents"): new session, stop session, open a sandbox terminal, open the
 * dashboard notebook, and show the panel. Each asks through a JupyterLab dialog and says what went wrong.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Dialog, ICommandPalette, Notification, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import type { SessionRow } from '../core/api.js';
import { h } from '../core/dom.js';
import { errorMessage } from '../core/format.js';
import type { ViewContext } from '../core/view.js';
import { DASHBOARD_PATH, dashboardNotebook, sessionLabel, stoppable, withTerminal } from './commands-model.js';

export const CATEGORY = 'Claude agents';

export const CommandIds = {
  showPanel: 'jupyter-cma:show-panel',
  newSession: 'jupyter-cma:new-session',
  stopSession: 'jupyter-cma:stop-session',
  openTerminal: 'jupyter-cma:open-terminal',
  openDashboard: 'jupyter-cma:open-dashboard'
} as const;

/** A dialog body: a small form whose value is read when the dialog closes. */
class FormBody<T> extends Widget implements Dialog.IBodyWidget<T> {
  constructor(form: HTMLElement, private readonly read: () => T) {
    super({ node: form });
    this.addClass('jp-cma-form');
  }
  getValue(): T {
    return this.read();
  }
}

async function pickSession(title: string, rows: SessionRow[], action: string): Promise<string | null> {
  const select = h('select', { 'aria-label': 'Session' }, rows.map(r => h('option', { value: r.id }, sessionLabel(r))));
  const form = h('div', null, h('label', null, 'Session', select));
  const result = await showDialog({
    title,
    body: new FormBody(form, () => select.value),
    focusNodeSelector: 'select',
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: action })]
  });
  return result.button.accept && result.value ? result.value : null;
}

/** Resolves once the live channel reports the session's first state here, or the list has it, or after `ms`. */
async function whenServed(ctx: ViewContext, sessionId: string, ms: number): Promise<void> {
  await new Promise<void>(resolve => {
    let done = false;
    const finish = () => {
      if (!done) {
        done = true;
        clearTimeout(timer);
        listener.dispose();
        resolve();
      }
    };
    const timer = setTimeout(finish, ms);
    const listener = ctx.live.listen(
      { kinds: ['session.state'] },
      {
        message: m => {
          if (m.data?.id === sessionId || m.session_id === sessionId) {
            finish();
          }
        },
        resync: () => {
          ctx.api.sessions({ limit: 50 }).then(page => {
            if (page.data.some(r => r.id === sessionId)) {
              finish();
            }
          }, () => undefined);
        }
      }
    );
  });
}

export interface CommandHost {
  app: JupyterFrontEnd;
  ctx: ViewContext;
  /** Opens the sidebar panel; with a session id, shows that session. */
  showPanel(sessionId?: string): void;
}

export function addCommands(host: CommandHost, palette: ICommandPalette | null): void {
  const { app, ctx } = host;
  const { commands } = app;

  commands.addCommand(CommandIds.showPanel, {
    label: 'Show the Claude agents panel',
    caption: 'Agents, sessions, egress and webhooks of this server',
    execute: () => host.showPanel()
  });

  commands.addCommand(CommandIds.newSession, {
    label: 'New Claude agent session…',
    caption: 'Start a session of an agent with a first message',
    execute: async () => {
      let agents;
      try {
        agents = (await ctx.api.agents(100)).data;
      } catch (error) {
        await showErrorMessage('Could not list the agents', errorMessage(error));
        return;
      }
      if (!agents.length) {
        await showErrorMessage('No agent yet', 'Create an agent first: the Agents tab of the Claude agents panel, or cma.Agent.create() in a notebook.');
        host.showPanel();
        return;
      }
      const select = h('select', { 'aria-label': 'Agent' }, agents.map(a => h('option', { value: a.id }, `${a.name}${a.tier ? ` (${a.tier})` : ''}`)));
      const text = h('textarea', { rows: 5, placeholder: 'What should the agent do?', 'aria-label': 'First message' });
      const form = h('div', null, h('label', null, 'Agent', select), h('label', null, 'First message', text));
      const result = await showDialog({
        title: 'New session',
        body: new FormBody(form, () => ({ agent_id: select.value, message: text.value.trim() })),
        focusNodeSelector: 'select',
        buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Start' })]
      });
      if (!result.button.accept || !result.value) {
        return;
      }
      try {
        const { agent_id, message } = result.value;
        const session = await ctx.api.createSession(message ? { agent_id, message } : { agent_id });
        Notification.success(`Started session ${session.id}`, { autoClose: 4000 });
        // The server knows the session once its worker claims it: show it then (or after a while regardless).
        host.showPanel();
        await whenServed(ctx, session.id, 15_000);
        host.showPanel(session.id);
      } catch (error) {
        await showErrorMessage('The session did not start', errorMessage(error));
      }
    }
  });

  commands.addCommand(CommandIds.stopSession, {
    label: 'Stop a Claude agent session…',
    caption: 'Stop the sandbox of a session this server serves',
    execute: async () => {
      let rows: SessionRow[];
      try {
        rows = stoppable((await ctx.api.sessions({ limit: 500 })).data);
      } catch (error) {
        await showErrorMessage('Could not list the sessions', errorMessage(error));
        return;
      }
      if (!rows.length) {
        await showErrorMessage('Nothing to stop', 'No sandbox of this server serves a session now.');
        return;
      }
      const id = await pickSession('Stop a session', rows, 'Stop');
      if (!id) {
        return;
      }
      try {
        await ctx.api.stopSession(id);
        Notification.info(`Stopped session ${id}`, { autoClose: 4000 });
      } catch (error) {
        await showErrorMessage('The session was not stopped', errorMessage(error));
      }
    }
  });

  commands.addCommand(CommandIds.openTerminal, {
    label: 'Open a sandbox terminal…',
    caption: 'A shell inside the container of a running container-tier session',
    execute: async () => {
      let rows: SessionRow[];
      try {
        rows = withTerminal((await ctx.api.sessions({ limit: 500 })).data);
      } catch (error) {
        await showErrorMessage('Could not list the sessions', errorMessage(error));
        return;
      }
      if (!rows.length) {
        await showErrorMessage('No container session', 'A terminal opens into the container of a running container-tier session; none runs now.');
        return;
      }
      const id = await pickSession('Open a sandbox terminal', rows, 'Open');
      if (id) {
        try {
          await ctx.openTerminal!(id);
        } catch (error) {
          await showErrorMessage('The terminal did not open', errorMessage(error));
        }
      }
    }
  });

  commands.addCommand(CommandIds.openDashboard, {
    label: 'Open the Claude agents dashboard notebook',
    caption: `Open ${DASHBOARD_PATH} (made if missing), which shows cma.dashboard()`,
    execute: async () => {
      const contents = app.serviceManager.contents;
      try {
        // the folder's listing, not a GET of the file: a 404 would be a console error in the page
        const root = await contents.get('', { content: true });
        const exists = (root.content as Array<{ name: string }>).some(item => item.name === DASHBOARD_PATH);
        if (!exists) {
          const specs = app.serviceManager.kernelspecs.specs;
          const spec = specs?.default ? specs.kernelspecs[specs.default] : undefined;
          const kernel = spec ? { name: spec.name, display_name: spec.display_name, language: spec.language } : undefined;
          await contents.save(DASHBOARD_PATH, { type: 'notebook', format: 'json', content: dashboardNotebook(kernel) });
        }
        await ctx.openNotebook!(DASHBOARD_PATH);
        // run it once its kernel is up, so the dashboard shows without another click
        const opened: any = app.shell.currentWidget;
        if (opened?.context?.path === DASHBOARD_PATH && opened.sessionContext) {
          await opened.sessionContext.ready;
          await app.commands.execute('notebook:run-all-cells');
        }
      } catch (error) {
        await showErrorMessage('The dashboard notebook did not open', errorMessage(error));
      }
    }
  });

  if (palette) {
    for (const command of Object.values(CommandIds)) {
      palette.addItem({ command, category: CATEGORY });
    }
  }
}
