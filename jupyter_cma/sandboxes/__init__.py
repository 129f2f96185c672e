"""Sandboxes: where an agent's tool calls run (containers, kernels)."""
