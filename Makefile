# The two commands of the README, plus benchmarks. Each one sets up what it needs.
.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/jupyter cma demo

test: setup
	PYTHONPATH=sandbox .venv/bin/lint-imports --no-cache
	.venv/bin/pytest

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
