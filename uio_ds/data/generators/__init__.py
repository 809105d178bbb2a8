"""Data made offline, by the ``uio-ds`` commands that write files, never on the training path:
prepared corpora (``corpus``), look-alike files of the paper's mixture (``samples``), synthetic
recall, pass-key and repetition tasks (``synthetic``), and fact records in many wordings
(``facts``)."""
