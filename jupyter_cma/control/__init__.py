"""The control plane: webhook ingest, dispatch of claimed work, session lifecycle."""
