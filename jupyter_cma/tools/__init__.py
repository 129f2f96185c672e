"""Custom tools that code inside a sandbox can call: `registry.ToolRegistry`, served at http://cma.internal/."""
