"""A local emulator of the Claude Managed Agents API.

It plays Anthropic's side of the wire for tests, teaching and trying things out
offline: environments, the work queue with real leases, sessions, events (list,
send, SSE stream), agents, skills and signed webhooks, driven by a pluggable
"brain" in place of the model. The unmodified `anthropic` SDK runs against it.

It shares no code with the rest of `jupyter_cma` on purpose: it is the other
side of the contract, and sharing would hide contract bugs.
"""

from .app import Emulator, EmulatorApp
from .brains import DemoBrain, ScriptedBrain
from .turns import Brain, ToolResult, Turn

__all__ = ["Brain", "DemoBrain", "Emulator", "EmulatorApp", "ScriptedBrain", "ToolResult", "Turn"]
