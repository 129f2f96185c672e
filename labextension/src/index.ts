/** The JupyterLab extension of jupyter-cma: the "Claude agents" sidebar, a status-bar item, commands, settings. */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { extensionIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-cma:plugin',
  description: 'Claude Managed Agents in JupyterLab.',
  autoStart: true,
  activate: (app: JupyterFrontEnd) => {
    const panel = new Widget();
    panel.id = 'jupyter-cma-panel';
    panel.title.icon = extensionIcon;
    panel.title.caption = 'Claude agents';
    app.shell.add(panel, 'left', { rank: 600 });
  }
};

export default plugin;
