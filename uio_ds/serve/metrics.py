"""What the server measures, for Prometheus (``GET /metrics``, through ``prometheus_client``):
time to the first token, the latency between tokens, requests by outcome, the queue, the number of
requests in each decoder pass, and the memory cache's hits. The scheduler reports into a
``ServingMetrics``; each server has its own registry, so several in one process (tests) do not mix."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServingMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.time_to_first_token = Histogram("uio_time_to_first_token_seconds", "From a request's arrival to its "
                                             "first token", buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token_latency = Histogram("uio_inter_token_latency_seconds", "Between two tokens of a request",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("uio_requests", "Requests by how they ended", ["outcome"], registry=r)
        self.rejected = Counter("uio_rejected_requests", "Requests refused before queueing", ["reason"], registry=r)
        self.generated_tokens = Counter("uio_generated_tokens", "Tokens generated", registry=r)
        self.batch_size = Histogram("uio_batch_size", "Requests decoded together, a decoder pass each",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.cache_segments = Counter("uio_memory_cache_segments", "Prompt segments by where their memory came "
                                      "from", ["result"], registry=r)
        self.queue = Gauge("uio_requests_in_flight", "Requests queued or running", registry=r)

    def track_queue(self, length: Callable[[], int]) -> None:
        """Report ``length()`` as the queue gauge, read at each scrape."""
        self.queue.set_function(length)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
