"""A single-producer stream over a generator, with a bounded buffer.

Exactly one thread ever calls `next()` on the user's generator, so nothing is
generated twice, whatever the number of consumers or workers. Items carry
their position in the stream (0, 1, 2, ...), which is also the index that
`worker_info()` reports to a transform. Consumers that stop early push their
unconsumed items back to the front, so no item is lost.
"""

import collections
import queue
import threading

from seqify import locks

_ITEM, _END, _ERROR = "item", "end", "error"


class StreamEnd(Exception):
    """The underlying iterator is exhausted."""


class Stream:
    """Runs `make_iterator()` on one producer thread into a buffer.

    Args:
        make_iterator: returns a fresh iterator over the stream.
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
        self._head = collections.deque()
        self._queue = None
        self._thread = None
        self._closed = threading.Event()
        self._lock_key = locks.new_key("seqify-stream")
        self.produced = 0  # items taken from the iterator since the last (re)start
        self._next_index = 0
        self._ended = False
        self._iterations = 0

    def _start(self):
        self._queue = queue.Queue(self._buffer_size)
        iterator = self._make_iterator()
        self._iterations += 1
        self.produced = 0
        self._ended = False
        self._closed.clear()
        self._thread = threading.Thread(
            target=self._produce, args=(iterator, self._queue), name=self._name, daemon=True
        )
        self._thread.start()

    def _produce(self, iterator, out):
        try:
            for item in iterator:
                if not self._put(out, (_ITEM, item)):
                    return
            self._put(out, (_END, None))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(out, (_ERROR, exc))

    def _put(self, out, message) -> bool:
        while not self._closed.is_set():
            try:
                out.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self):
        """Returns `(index, item)`; raises StreamEnd or the generator's error."""
        with locks.get_lock(self._lock_key):
            if self._head:
                return self._head.popleft()
            if self._ended:
                raise StreamEnd()
            if self._thread is None:
                self._start()
            kind, value = self._queue.get()
            if kind == _ITEM:
                index = self._next_index
                self._next_index += 1
                self.produced += 1
                return index, value
            self._ended = True
            self._thread.join()
            self._thread = None
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
            self._ended = False
            self._start()

    @property
    def ended(self) -> bool:
        return self._ended and not self._head

    def close(self) -> None:
        """Stops the producer (it exits at its next buffer hand-off)."""
        self._closed.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=1.0)
        self._head.clear()
        self._ended = False
