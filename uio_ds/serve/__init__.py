"""Using trained memory models: an OpenAI-compatible HTTP server (``api``), the scheduler that runs
requests with batching and conversation sessions (``scheduler``), a terminal chat (``chat``), and
one-shot generation from the command line (``generate``: ``uio-ds generate``, ``uio-ds demo``)."""
