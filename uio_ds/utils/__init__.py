"""Small utilities any layer may use: what a measurement ran on (``machine``), devices
(``devices``), live-tensor accounting (``memory_tracker``) and saved-tensor offload (``offload``)."""
