"""Browser tests: a real JupyterLab with jupyter-cma, driven by Playwright over Debian's Chromium."""
