#!/usr/bin/env bash
# Set up everything `make demo`, `make test` and `make bench` need, on a fresh
# Debian 12 machine: system packages, the Docker engine, and a virtualenv with
# jupyter-cma installed in editable mode. Safe to re-run: each step is skipped
# when already done (the venv is re-installed only when pyproject.toml changes).
set -euo pipefail
cd "$(dirname "$0")/.."

# --- system packages (bubblewrap isolates kernel sandboxes; chromium runs the browser tests) ---
need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # the browser tests' browser (Playwright drives it)
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing ${need[*]}; run as root or install them with apt" >&2
    exit 1
  fi
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  echo "setup: installed ${need[*]}"
fi

# --- the Docker engine for container sandboxes ---------------------------------
bash scripts/docker-engine.sh

# --- the virtualenv -------------------------------------------------------------
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -f $stamp ]]; then
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  # The JupyterLab extension is built below (only when its sources change), not by pip's isolated build.
  SKIP_JUPYTER_BUILDER=1 .venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import jupyter_cma, anthropic" # fail here, not later, if the install broke
  rm -f .venv/.installed-*
  touch "$stamp"
  echo "setup: installed jupyter-cma into .venv"
fi

# --- the JupyterLab extension and the notebook widgets: labextension/ (TypeScript) -> jupyter_cma/labextension,
# jupyter_cma/widgets/static. Rebuilt only when its sources change (a hash of them, as for the image).
lab_hash=$(cd labextension && find package.json yarn.lock tsconfig.json .yarnrc.yml install.json src style schema scripts \
  -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
lab_stamp=".venv/.labextension-$lab_hash"
if [[ ! -f $lab_stamp || ! -f jupyter_cma/labextension/static/style.js || ! -f jupyter_cma/widgets/static/dashboard.js ]]; then
  (cd labextension && export PATH="$PWD/../.venv/bin:$PATH" \
     && jlpm install --immutable >/dev/null && jlpm build:prod >/dev/null)
  # JupyterLab finds the extension through a link to the build: .venv/share/jupyter/labextensions/jupyter-cma
  .venv/bin/jupyter-builder develop --overwrite . >/dev/null
  rm -f .venv/.labextension-*
  touch "$lab_stamp"
  echo "setup: built the JupyterLab extension"
fi

# --- the egress proxy's engine (mitmproxy in an environment of its own) --------
engine_stamp=".venv/.egress-engine-$(grep -o 'ENGINE_REQUIREMENTS = .*' jupyter_cma/egress/proxy.py | sha256sum | cut -c1-16)"
if [[ ! -f $engine_stamp ]]; then
  .venv/bin/jupyter-cma install-egress-engine 2>&1 | grep -v "^WARNING: Location" || true
  .venv/share/jupyter-cma/egress-engine/bin/python -c "import mitmproxy" # fail here if the install broke
  rm -f .venv/.egress-engine-*
  touch "$engine_stamp"
  echo "setup: installed the egress engine"
fi

# --- the container sandbox image (offline build: debootstrap + host-side wheels; cached) ---
# About two minutes the first time; a second or so when it is up to date.
.venv/bin/jupyter-cma build-image 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -n 3
