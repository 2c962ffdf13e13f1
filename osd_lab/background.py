"""Updates off the serving path: a thread that distils while queries are served.

``OnlineSpeculativeDecoder(..., update_mode="background")`` (``osd_lab.online``)
trains a private copy of each draft in a ``BackgroundTrainer``'s thread. After
each update that its guard kept, the copy's trainable weights are published;
the decoder copies them into the draft that serves between two queries, never
during one, so the serving draft is always one complete set of weights that
passed the guard.

Cores. torch has one pool of CPU threads per process, shared by every Python
thread. ``split_threads`` says how a decoder divides its ``threads``: while
the trainer has work, serving and training each run on ``threads // 2``
(two busy threads on two cores, not four fighting for two); while it is idle,
serving gets them all. Plain decoding, the baseline, always gets all of them
with the trainer paused: the comparison counts the cores training takes.
torch ops release Python's GIL, so the two threads compute at the same time.
Taught in ``notebooks/06_online_speculative_decoding``.
"""

import os
import threading
import time
import weakref
from contextlib import contextmanager

import torch

from osd_lab.checks import ArgumentError, check_int


def check_threads(threads, update_mode: str) -> int:
    """``threads`` (None: ``torch.get_num_threads()``) checked against the
    machine's cores and the update mode; returns it."""
    threads = torch.get_num_threads() if threads is None else threads
    check_int("threads", threads, 1, os.cpu_count())
    if update_mode == "background" and threads < 2:
        raise ArgumentError(f"update_mode='background' needs threads >= 2 (one half serves, "
                            f"the other trains), got threads={threads}: use "
                            f"update_mode='sync' on one thread")
    return threads


def resolve_update_mode(update_mode: str, threads) -> str:
    """``"auto"`` (the decoder's default): ``"background"`` when the decoder has
    at least 2 threads (``threads``; None: torch's current count), else
    ``"sync"``; any other mode is returned as it is."""
    if update_mode != "auto":
        return update_mode
    threads = torch.get_num_threads() if threads is None else threads
    return "background" if isinstance(threads, int) and threads >= 2 else "sync"


def split_threads(threads: int, trainer_busy: bool) -> int:
    """Torch threads for serving (and, while it is busy, for the trainer)."""
    return threads // 2 if trainer_busy else threads


@contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch CPU threads, then restore the count."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


class BackgroundTrainer:
    """A thread that calls ``update(name)`` for each submitted name, in order.
    A name that is already waiting is not queued again: its update samples
    the buffer when it runs, so it trains on the newest queries anyway, and a
    trainer slower than the traffic takes fewer updates instead of falling
    ever further behind.

    update: a bound method; the trainer keeps only a weak reference to its
    object, so deleting the decoder that owns the trainer stops the thread.
    ``cpu_s`` is the CPU time the thread used.
    """

    def __init__(self, update):
        self._update = weakref.WeakMethod(update)
        self._jobs = []  # names waiting, oldest first
        self._pending = 0  # waiting + running
        self._changed = threading.Condition()
        self._running = threading.Lock()  # held while an update runs
        self.cpu_s = 0.0
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="osd-lab-trainer", daemon=True)
        self._thread.start()

    def submit(self, name) -> bool:
        """Queue an update of ``name``; False if one is already waiting."""
        with self._changed:
            if self._closing:
                raise RuntimeError("the trainer is closed: create a new decoder to keep training")
            if name in self._jobs:
                return False
            self._jobs.append(name)
            self._pending += 1
            self._changed.notify_all()
            return True

    def busy(self) -> bool:
        """Whether an update is waiting or running."""
        with self._changed:
            return self._pending > 0

    def paused(self):
        """``with trainer.paused():`` no update runs inside the block (one that
        is running finishes first)."""
        return self._running

    def wait(self) -> None:
        """Until every submitted update has run."""
        with self._changed:
            self._changed.wait_for(lambda: self._pending == 0 or not self._thread.is_alive())

    def close(self) -> None:
        """Run the submitted updates, then stop the thread."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self):
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._jobs or self._closing)
                if not self._jobs:  # closing, nothing left
                    return
                name = self._jobs.pop(0)
            update = self._update()
            if update is None:  # the decoder is gone
                return
            with self._running:
                cpu = time.thread_time()
                update(name)  # catches its own errors: the thread never dies of one
                self.cpu_s += time.thread_time() - cpu
            del update  # no strong reference while waiting
            with self._changed:
                self._pending -= 1
                self._changed.notify_all()
