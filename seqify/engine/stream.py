"""A single-producer stream over a generator, with a bounded buffer.

Exactly one thread ever calls `next()` on the user's generator, so nothing is
generated twice, whatever the number of consumers or workers. Items carry
their position in the stream (0, 1, 2, ...), which is also the index that
`worker_info()` reports to a transform. Consumers that stop early push their
unconsumed items back to the front, and `close()` keeps whatever the producer
had buffered, so no item is ever lost: a closed stream resumes where its
consumer stopped.
"""

import collections
import queue
import threading

from seqify import locks

_ITEM, _END, _ERROR = "item", "end", "error"


class StreamEnd(Exception):
    """The underlying iterator is exhausted."""


class Stream:
    """Runs an iterator on one producer thread into a bounded buffer.

    Args:
        make_iterator: returns a fresh iterator over the stream. It must not
            reference the owning Sequence (the producer thread would keep it
            alive).
        restartable: whether `make_iterator` may be called again once the
            stream ended (true for generator functions and re-iterables).
        buffer_size: how many items the producer may run ahead.
        name: producer thread name.
    """

    def __init__(self, make_iterator, restartable: bool, buffer_size: int, name: str = "seqify-producer"):
        self._make_iterator = make_iterator
        self.restartable = restartable
        self._buffer_size = buffer_size
        self._name = name
        self._lock_key = locks.new_key("seqify-stream")
        self._head = collections.deque()  # (index, item) ready to serve first
        self._spill = collections.deque()  # messages a stopped producer still had
        self._iterator = None
        self._queue = None
        self._thread = None
        self._stop = None
        self._ended = False
        self._next_index = 0
        self.produced = 0  # items taken from the iterator since it (re)started

    # -- producer -------------------------------------------------------------
    def _start_producer(self):
        if self._iterator is None:
            self._iterator = self._make_iterator()
            self.produced = 0
        self._queue = queue.Queue(self._buffer_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_produce, args=(self._iterator, self._queue, self._stop, self._spill),
            name=self._name, daemon=True,
        )
        self._thread.start()

    def _stop_producer(self):
        thread, stop, buffered = self._thread, self._stop, self._queue
        self._thread = self._queue = self._stop = None
        if thread is None:
            return
        stop.set()
        thread.join(timeout=1.0)
        # Keep what it had buffered, in order, ahead of what it spilled on stop.
        spilled = list(self._spill)
        self._spill.clear()
        while True:
            try:
                self._spill.append(buffered.get_nowait())
            except queue.Empty:
                break
        self._spill.extend(spilled)

    # -- consumer -------------------------------------------------------------
    def next(self):
        """Returns `(index, item)`; raises StreamEnd or the generator's error."""
        with locks.get_lock(self._lock_key):
            if self._head:
                return self._head.popleft()
            if self._ended:
                raise StreamEnd()
            if self._spill:
                kind, value = self._spill.popleft()
            else:
                if self._thread is None:
                    self._start_producer()
                kind, value = self._queue.get()
            if kind == _ITEM:
                index = self._next_index
                self._next_index += 1
                self.produced += 1
                return index, value
            self._stop_producer()
            self._iterator = None
            self._ended = True
            if kind == _END:
                raise StreamEnd()
            raise value

    def push_front(self, items) -> None:
        """Puts unconsumed `(index, item)` pairs back, in order, at the front."""
        with locks.get_lock(self._lock_key):
            self._head.extendleft(reversed(list(items)))

    def restart(self) -> None:
        """Starts a fresh iterator after the stream ended."""
        with locks.get_lock(self._lock_key):
            if not self.restartable:
                raise RuntimeError("this stream cannot restart")
            self._stop_producer()
            self._spill.clear()
            self._iterator = None
            self._ended = False

    def close(self) -> None:
        """Stops the producer thread; buffered items are kept for later."""
        with locks.get_lock(self._lock_key):
            self._stop_producer()

    @property
    def producer_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def _produce(iterator, out, stop, spill):
    """Producer loop; a module function so the thread holds no Sequence."""

    def put(message):
        while not stop.is_set():
            try:
                out.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        # Stopped while holding an item: hand it over rather than drop it.
        spill.append(message)
        return False

    try:
        for item in iterator:
            if not put((_ITEM, item)):
                return
            if stop.is_set():
                return
        put((_END, None))
    except BaseException as exc:  # handed to the consumer, raised there
        put((_ERROR, exc))
