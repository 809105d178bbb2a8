"""Loading a frozen base model from a local directory: the one place uio_ds calls
``AutoModelForCausalLM.from_pretrained``.

transformers 5.25 and newer, when the ``kernels`` package is installed (transformers itself now
brings it), replace layers of every model it loads with kernels fetched from the Hugging Face Hub
(``kernelize``: RMSNorm and SiLU on CUDA, for instance). uio_ds loads with ``use_kernels=False``:

* no code or weights are fetched from a hub at run time;
* the model computes exactly what its transformers class says, on every device, so the memory
  model, its references in the tests and the GPU checks compute the same thing;
* ``device_map={"": "meta"}`` works (``kernelize`` refuses the meta device).

Attention kernels are chosen by ``attn_implementation`` (:mod:`uio_ds.model.attention`), which
``use_kernels`` does not touch.
"""

from __future__ import annotations


def load_causal_lm(path: str, **kwargs):
    """``AutoModelForCausalLM.from_pretrained(path, **kwargs)`` with hub kernels off.

    ``path`` is a local directory (or one holding a ``gguf_file``); ``kwargs`` go to transformers
    unchanged (``dtype``, ``attn_implementation``, ``device_map``, ``gguf_file``, ...).
    """
    from transformers import AutoModelForCausalLM

    if "use_kernels" in kwargs:
        raise ValueError("load_causal_lm always loads with use_kernels=False (no hub kernels): drop use_kernels")
    return AutoModelForCausalLM.from_pretrained(path, use_kernels=False, **kwargs)
