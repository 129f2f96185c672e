"""Tornado handlers: the REST API under {base_url}cma/api/ and, later, the webhook route."""
