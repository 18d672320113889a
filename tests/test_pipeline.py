"""The GPU pipeline's logic (issue 16.4) on the CPU: order, completeness, back-pressure, slot
ownership, errors; and ``run_pipelined`` on the CPU device equal to ``run_batched``."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from ndgeo.nn import NDClassifier
from ndgeo.nn.inference import argmax_rows, band_major, run_batched, run_pipelined
from ndgeo.pipeline import run_pipeline


class FakeDevice:
    """Asynchronous work on a thread pool with random durations, recording what is in flight
    and which slots are in use (the checks a CUDA stream cannot show on a CPU machine)."""

    def __init__(self, depth: int) -> None:
        self.pool = ThreadPoolExecutor(4)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.busy_slots: set[int] = set()
        self.depth = depth
        self.submitted: list[int] = []
        self.rng = random.Random(0)

    def submit(self, slot: int, item: int):
        with self.lock:
            assert 0 <= slot < self.depth
            assert slot not in self.busy_slots, f"slot {slot} reused while in flight"
            self.busy_slots.add(slot)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.submitted.append(item)
        delay = self.rng.uniform(0, 0.004)

        def work() -> int:
            time.sleep(delay)
            if item == getattr(self, "fail_at", None):
                raise RuntimeError(f"device error at {item}")
            return item * item

        return slot, self.pool.submit(work)

    def collect(self, handle) -> int:
        slot, future = handle
        try:
            return future.result()
        finally:
            with self.lock:
                self.busy_slots.discard(slot)
                self.in_flight -= 1


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_results_in_order_complete_and_bounded(depth):
    device = FakeDevice(depth)
    got = list(run_pipeline(range(40), device.submit, device.collect, depth))
    assert got == [i * i for i in range(40)]
    assert device.submitted == list(range(40))
    assert device.max_in_flight == min(depth, 40)
    assert device.in_flight == 0 and not device.busy_slots


def test_back_pressure_pulls_items_only_as_results_are_taken():
    produced = []

    def items():
        for i in range(100):
            produced.append(i)
            yield i

    device = FakeDevice(3)
    results = run_pipeline(items(), device.submit, device.collect, 3)
    for taken in range(1, 11):
        next(results)
        # depth items in flight beyond those taken (the next is submitted before a result is
        # handed out), never the whole input
        assert len(produced) == taken + 3
    results.close()
    assert device.in_flight == 0 and not device.busy_slots  # closing waits for the rest


def test_an_error_stops_submission_and_waits_for_what_is_in_flight():
    device = FakeDevice(2)
    device.fail_at = 7
    got = []
    with pytest.raises(RuntimeError, match="device error at 7"):
        for r in run_pipeline(range(30), device.submit, device.collect, 2):
            got.append(r)
    assert got == [i * i for i in range(7)]
    assert len(device.submitted) <= 7 + 2
    assert device.in_flight == 0 and not device.busy_slots


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        list(run_pipeline([1], lambda s, i: i, lambda h: h, 0))


def _model():
    torch.manual_seed(0)
    model = NDClassifier(10, 5, n_indices=8, head_norm="batchnorm", head_hidden=[16])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return band_major(model.eval())


@pytest.mark.parametrize(("batch", "depth"), [(1000, 1), (1000, 2), (4096, 3), (20000, 2)])
def test_run_pipelined_on_cpu_equals_run_batched(batch, depth):
    """The pipelined path (pinned-buffer slots, host float32 conversion, per-slot outputs) on
    the CPU device gives exactly what the plain batched path gives, for class ids and logits."""
    net = _model()
    x = np.random.default_rng(1).integers(0, 12000, (10, 9999), dtype=np.uint16)
    cpu = torch.device("cpu")
    for fn in (lambda b: argmax_rows(net(b.float())), lambda b: net(b.float())):
        want = run_batched(fn, x, batch, cpu, axis=1)
        got = run_pipelined(fn, x, batch, cpu, depth=depth)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)


def test_run_pipelined_threads_do_not_share_buffers():
    """Engine threads each own their slots: concurrent calls give each its own result."""
    net = _model()
    cpu = torch.device("cpu")
    inputs = [np.random.default_rng(s).integers(0, 12000, (10, 5000), dtype=np.uint16)
              for s in range(8)]

    def fn(b):
        return net(b.float())

    want = [run_batched(fn, x, 700, cpu, axis=1) for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: run_pipelined(fn, x, 700, cpu), inputs))
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
