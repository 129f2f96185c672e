# The two commands of the README, plus benchmarks. Each one sets up what it needs.
.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/jupyter cma demo

# Two workers (most tests wait on kernels, containers and HTTP); a short base directory, because kernels'
# and sandboxes' Unix sockets live under each test's directory and a socket path holds about 100 bytes.
test: setup
	PYTHONPATH=sandbox .venv/bin/lint-imports --no-cache
	.venv/bin/pytest -n 2 --basetemp=/tmp/cma-tests

bench: setup
	.venv/bin/python bench/bench_emulator.py
	.venv/bin/python bench/bench_webhooks.py
	.venv/bin/python bench/bench_kernel.py
	.venv/bin/python bench/bench_proxy.py
	.venv/bin/python bench/bench_container.py
	.venv/bin/python bench/bench_tools.py
	.venv/bin/python bench/bench_live.py
	.venv/bin/python bench/bench_web_fetch.py
	.venv/bin/python bench/bench_browser.py
