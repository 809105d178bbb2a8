"""Serving trained memory models: an OpenAI-compatible HTTP server (``api``), the engine that runs
requests with batching and conversation sessions (``engine``), and a terminal chat (``chat``)."""
