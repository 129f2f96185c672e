"""Tornado handlers: the REST API under {base_url}cma/api/ and the webhook route; `web/handlers.py` lists the routes."""
