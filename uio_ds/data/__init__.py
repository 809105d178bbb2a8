"""Training data.

The runtime path: ``sources`` (files, formats, records, ``read_texts``), ``tokenise``, ``cache``
(the tokenised cache of a source), ``documents`` (pieces and their labels), ``streams`` (mixed,
sharded, resumable streams; ``build_stream``). Offline: ``generators``.
"""
