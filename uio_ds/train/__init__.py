"""Training under DeepSpeed.

* ``cli``: the entry point (``deepspeed --module uio_ds.train``, ``launch/train.py``, ``uio-ds train``);
* ``launcher``: ``uio-ds launch``, DeepSpeed's runner without its traceback on Ctrl-C;
* ``trainer``: builds the parts (data, model, strategy, engine) and runs the step loop;
* ``engine``: the DeepSpeed step, the only module that imports deepspeed;
* ``ds_config``: the DeepSpeed config resolved from the training config (dict logic);
* ``dist``: the process group as training uses it (``torch.distributed``);
* ``checkpoint``: checkpoint protocol, save/restore, and the run's output directory and lock;
* ``metrics``: TensorBoard and ``metrics.jsonl``;
* ``stopping``: signals, the launcher's exit, and the ways a run stops itself.
"""

from uio_ds.train.cli import main

__all__ = ["main"]
