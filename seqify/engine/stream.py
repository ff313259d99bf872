"""A single-producer stream over a generator, with a bounded read-ahead buffer.

Exactly one thread at a time calls `next()` on the user's generator, so
nothing is generated twice, whatever the number of consumers or workers.
Items carry their position in the stream (0, 1, 2, ...), which is also the
index that `worker_info()` reports to a transform. Consumers that stop early
push their unconsumed items back to the front, and `close()` keeps whatever
was buffered, so no item is ever lost: a closed stream resumes where its
consumer stopped.

Who calls `next()`: a background producer thread reads ahead while no
consumer is asking (e.g. while the model trains, releasing the GIL); a
consumer that finds the buffer empty and nobody pulling pulls the next item
itself. Measured (benchmarks/RESULTS.md), a pure producer thread costs 6-14%
when the generator is the bottleneck, from GIL hand-offs between the two
threads; pulling on the consumer's thread costs nothing. The price: the
generator is resumed from more than one thread (never two at once), so a
generator holding a thread-bound resource (a sqlite3 connection with
check_same_thread) must open it without that check.
"""

import collections
import threading

from seqify import locks

_ITEM, _END, _ERROR = "item", "end", "error"


class StreamEnd(Exception):
    """The underlying iterator is exhausted."""


class Stream:
    """Pulls from an iterator on demand, reading ahead on a helper thread.

    Args:
        make_iterator: returns a fresh iterator over the stream. It must not
            reference the owning Sequence (the producer thread would keep it
            alive).
        restartable: whether `make_iterator` may be called again once the
            stream ended (true for generator functions and re-iterables).
        buffer_size: how many items may be read ahead.
        name: producer thread name.
    """

    def __init__(self, make_iterator, restartable: bool, buffer_size: int, name: str = "seqify-producer"):
        self._make_iterator = make_iterator
        self.restartable = restartable
        self._buffer_size = buffer_size
        self._name = name
        self._lock_key = locks.new_key("seqify-stream")  # serializes consumers
        self._state = _State(buffer_size)
        self._head = collections.deque()  # (index, item) pushed back by consumers
        self._thread = None
        self._ended = False
        self._next_index = 0
        self.produced = 0  # items taken from the iterator since it (re)started
        # Stream index of the first item of each recent run of the iterator
        # (a finite source restarts at epoch boundaries): what a replay needs.
        self._run_starts = collections.deque(maxlen=8)

    def _ensure_iterator(self):
        state = self._state
        if state.iterator is None:
            state.iterator = self._make_iterator()
            state.done = False
            self.produced = 0
            self._run_starts.append(self._next_index)
        if self._thread is None or not self._thread.is_alive():
            state.stop = False
            self._thread = threading.Thread(target=_produce, args=(state,), name=self._name, daemon=True)
            self._thread.start()

    def next(self):
        """Returns `(index, item)`; raises StreamEnd or the generator's error."""
        with locks.get_lock(self._lock_key):
            if self._head:
                return self._head.popleft()
            if self._ended:
                raise StreamEnd()
            self._ensure_iterator()
            kind, value = self._state.take()
            if kind == _ITEM:
                index = self._next_index
                self._next_index += 1
                self.produced += 1
                return index, value
            self._stop_producer()
            self._state.iterator = None
            self._ended = True
            if kind == _END:
                raise StreamEnd()
            raise value

    def push_front(self, items) -> None:
        """Puts unconsumed `(index, item)` pairs back, in order, at the front."""
        with locks.get_lock(self._lock_key):
            self._head.extendleft(reversed(list(items)))

    def run_start(self, index: int) -> int:
        """Stream index of the first item of the run that holds item `index`."""
        with locks.get_lock(self._lock_key):
            starts = [start for start in self._run_starts if start <= index]
            return max(starts) if starts else 0

    def reposition(self, iterator, index: int, offset: int) -> None:
        """Continues from `iterator`, whose next item is stream item `index`,
        `offset` items into its run. Anything buffered is dropped."""
        with locks.get_lock(self._lock_key):
            self._stop_producer()
            self._state.reset()
            self._head.clear()
            self._state.iterator = iterator
            self._ended = False
            self._next_index = index
            self.produced = offset
            self._run_starts.clear()
            self._run_starts.append(index - offset)

    def restart(self) -> None:
        """Starts a fresh iterator after the stream ended."""
        with locks.get_lock(self._lock_key):
            if not self.restartable:
                raise RuntimeError("this stream cannot restart")
            self._stop_producer()
            self._state.reset()
            self._ended = False

    def _stop_producer(self):
        thread, self._thread = self._thread, None
        if thread is not None:
            self._state.request_stop()
            thread.join(timeout=1.0)

    def close(self) -> None:
        """Stops the producer thread; buffered items are kept for later."""
        with locks.get_lock(self._lock_key):
            self._stop_producer()


class _State:
    """What the producer thread and consumers share, guarded by one condition.

    A module-level object (not the Stream) so that the producer thread keeps
    no Sequence alive.
    """

    def __init__(self, buffer_size):
        self.cv = threading.Condition(threading.Lock())
        self.buffer = collections.deque()  # (kind, value) messages, in stream order
        self.buffer_size = buffer_size
        self.iterator = None
        self.pulling = False  # someone is inside next(iterator)
        self.consumers = 0  # consumers waiting in take()
        self.done = False  # the iterator ended or raised
        self.stop = False

    def reset(self):
        with self.cv:
            self.buffer.clear()
            self.iterator = None
            self.done = False

    def request_stop(self):
        with self.cv:
            self.stop = True
            self.cv.notify_all()

    def pull(self):
        """One `next()` on the iterator, as a message (caller set `pulling`)."""
        try:
            return (_ITEM, next(self.iterator))
        except StopIteration:
            return (_END, None)
        except BaseException as exc:  # handed to the consumer, raised there
            return (_ERROR, exc)

    def finish_pull(self, message, keep):
        with self.cv:
            self.pulling = False
            if message[0] != _ITEM:
                self.done = True
            if keep:
                self.buffer.append(message)
            self.cv.notify_all()

    def take(self):
        """The next message: buffered, or pulled right here if nobody is pulling."""
        with self.cv:
            self.consumers += 1
            try:
                while True:
                    if self.buffer:
                        message = self.buffer.popleft()
                        self.cv.notify_all()  # room for the producer
                        return message
                    if not self.pulling and not self.done:
                        self.pulling = True
                        break
                    self.cv.wait()  # the producer is mid-pull: its item is next
            finally:
                self.consumers -= 1
        message = self.pull()
        self.finish_pull(message, keep=False)
        return message


def _produce(state):
    """Reads ahead while no consumer is asking; exits on stop or end."""
    while True:
        with state.cv:
            while not state.stop and (
                state.done or state.pulling or state.consumers or len(state.buffer) >= state.buffer_size
            ):
                if state.done:
                    return
                state.cv.wait(0.1)
            if state.stop:
                return
            state.pulling = True
        # Even when stopped meanwhile, a pulled item is kept, never dropped.
        state.finish_pull(state.pull(), keep=True)
