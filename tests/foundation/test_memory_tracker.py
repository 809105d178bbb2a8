import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from uio_ds.utils.memory_tracker import TensorMemoryTracker

MIB = 2**20


def test_counts_new_storage_until_freed():
    w = torch.randn(256, 256)
    with TensorMemoryTracker() as tracker:
        a = torch.randn(1024, 256)  # 1 MiB
        b = a @ w  # 1 MiB
        view = b.t()  # a view: no new storage
        b.add_(1)  # in place: no new storage
        assert tracker.current == 2 * MIB
        del a
        assert tracker.current == 1 * MIB
        c = torch.randn(2048, 256)  # 2 MiB
        assert (tracker.current, tracker.peak) == (3 * MIB, 3 * MIB)
        del b, view, c
        assert tracker.current == 0
        tracker.reset_peak()
        assert tracker.peak == 0


def test_counts_saved_activations_and_gradients():
    w = torch.randn(256, 256)
    x = torch.randn(512, 256, requires_grad=True)
    with TensorMemoryTracker() as tracker:
        y = (x @ w).relu()  # 0.5 MiB matmul output (freed) -> 0.5 MiB relu output, saved
        loss = y.sum()
        live_forward = tracker.current
        loss.backward()
    assert live_forward >= 0.5 * MIB
    assert x.grad is not None and tracker.current >= 0.5 * MIB  # x.grad was allocated inside


def test_fake_cuda_device_without_gpu():
    with FakeTensorMode():
        with TensorMemoryTracker("cuda") as tracker:
            a = torch.empty(1024, 1024, device="cuda")  # 4 MiB, no real memory
            b = a @ a
            cpu = torch.empty(1024, 1024)  # other device: not counted
            assert (tracker.current, tracker.peak) == (8 * MIB, 8 * MIB)
            del a, b, cpu
            assert tracker.current == 0
