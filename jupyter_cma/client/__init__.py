"""The notebook side of jupyter-cma: a thin client of the server's REST API (agents, sessions, tools).

It runs in users' kernels and scripts, so it imports nothing of the server (an import-linter contract
checks it) and its imports are lazy where they cost.
"""
