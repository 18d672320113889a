"""A bounded, ordered pipeline of asynchronous steps (how ``--device cuda`` overlaps its work).

:func:`run_pipeline` keeps at most ``depth`` items submitted and not yet collected: while the
device computes item ``i`` (started by ``submit``), the caller already prepares and submits
item ``i + 1`` (host conversion into the next pinned buffer), and only then waits for item
``i`` (``collect``). Each submitted item gets a *slot* in ``range(depth)`` whose buffers it
owns until collected, so a slot is never reused while the device may still read or write it.
Results come back in submission order. No torch or CUDA here: the CUDA steps are in
:func:`ndgeo.nn.inference.run_pipelined`, and tests drive this logic on the CPU.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from typing import Any, TypeVar

T = TypeVar("T")
H = TypeVar("H")
R = TypeVar("R")


def run_pipeline(
    items: Iterable[T],
    submit: Callable[[int, T], H],
    collect: Callable[[H], R],
    depth: int = 2,
) -> Iterator[R]:
    """``collect(submit(slot, item))`` for every item, in order, with at most ``depth`` items
    in flight (submitted, not collected): back-pressure on whatever produces ``items``.

    ``submit(slot, item)`` starts the work (it may return before the work is done) using the
    buffers of ``slot``; ``collect(handle)`` waits for it and returns its result, which must
    not be a view of the slot's buffers (the slot is reused before the result is yielded).
    When the consumer stops early or a step raises, the items still in flight are collected (waited
    for) before the error or ``GeneratorExit`` goes on, so no buffer is left in use.
    """
    if depth < 1:
        raise ValueError(f"pipeline depth must be >= 1, got {depth}")
    pending: deque[tuple[int, Any]] = deque()
    free = deque(range(depth))
    try:
        for item in items:
            result, ready = None, False
            if not free:
                slot, handle = pending.popleft()
                result, ready = collect(handle), True
                free.append(slot)
            slot = free.popleft()
            pending.append((slot, submit(slot, item)))  # the device gets work first,
            if ready:
                yield result  # then the consumer gets the oldest result
        while pending:
            slot, handle = pending.popleft()
            result = collect(handle)
            free.append(slot)
            yield result
    finally:
        while pending:  # drain: the device may still be using these slots' buffers
            _, handle = pending.popleft()
            with suppress(Exception):  # the first error is the one raised
                collect(handle)
