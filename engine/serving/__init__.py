"""The OpenAI-compatible HTTP server (`python -m engine serve`): app, load state, routes, options and guards."""
