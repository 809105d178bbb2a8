"""Training data.

The runtime path: ``files`` (which files a source names, formats, raw items), ``sources``
(records of every kind, ``read_texts``), ``tokenise``, ``cache`` (the tokenised cache of a
source), ``documents`` (pieces and their labels), ``streams`` (mixed, sharded, resumable
streams; ``build_stream``). Offline: ``generators``.
"""
