"""`EpochRunner`: runs the passes of one seqify object in this process.

It owns what a pass needs and nothing a pickle should carry:
- the epoch cursor (which epoch comes next, and where in it a pass starts),
- the worker pool (started lazily, reused across passes and across
  fit/evaluate/predict, replaced when the settings change or a worker died),
- the source's per-process state (a stream's producer, items read ahead),
- typed caches (the tf.data signature).

A pass is `iter_epoch()`: the source's tasks go through the ordered window
(`seqify.engine.window`) on the pool, and batches come out in the source's
order. A pass stopped early hands its undelivered work back to the source.
"""

import collections
import dataclasses
import logging
import threading
from typing import Callable, Iterator, Optional

from seqify import input_wait
from seqify.engine import errors
from seqify.engine.inline_pool import InlinePool
from seqify.engine.messages import Task
from seqify.engine.shm_transport import MAX_SLOTS
from seqify.engine.thread_pool import ThreadPool
from seqify.engine.window import ordered
from seqify.settings import AUTO, Settings
from seqify.source import NO_HANDLE, Pass, Source

logger = logging.getLogger("seqify")


@dataclasses.dataclass
class Cursor:
    """Where the next pass starts: `position` within `epoch`."""

    epoch: int = 0
    position: int = 0


#: How many delivered batches a consumer that pulled ahead can give back.
#: Far above what Keras or tf.distribute prefetch (1-2 per device).
GIVE_BACK_LIMIT = 32


class Delivered:
    """The newest batches a pass delivered, as `(task, batch)`, newest last.

    A consumer that pulls ahead of its own consumer (tf.data's and
    tf.distribute's prefetch, JAX's look-ahead) passes one to `iter_epoch`
    and can later hand back what was pulled but never used
    (`EpochRunner.give_back`), so a stream loses nothing.
    """

    def __init__(self, limit: int = GIVE_BACK_LIMIT):
        self.entries = collections.deque(maxlen=limit)
        self.count = 0
        self.plan = None
        self.given_back = 0

    def record(self, task, batch) -> None:
        self.entries.append((task, batch))
        self.count += 1


class EpochRunner:
    """Runs passes of `source` under `settings` (see module docstring).

    Args:
        source: the object's `seqify.source.Source`.
        settings: the object's `seqify.settings.Settings`; replace it with
            `update_settings`.
        name: names the worker threads/processes.
    """

    def __init__(self, source: Source, settings: Settings, name: str = "seqify"):
        self.source = source
        self.settings = settings
        self.name = name
        self.lock = threading.RLock()
        self.cursor = Cursor()
        self.state = source.make_state()
        self.signatures = {}  # class_weight given (bool) -> tf.data signature
        self._pool = None
        self._pool_key = None
        self._resolved = None  # (workers, use_multiprocessing) once "auto" is measured

    # -- settings and pool ---------------------------------------------------
    def update_settings(self, settings: Settings) -> None:
        with self.lock:
            if settings.pool_key() != self.settings.pool_key():
                self._resolved = None
            self.settings = settings

    def workers(self):
        """`(workers, use_multiprocessing)` in force (after "auto" is resolved).

        "auto" is measured once (`seqify.check.choose_workers`, on pools of
        its own, consuming nothing), logged once on the "seqify" logger, and
        kept until the settings change.
        """
        settings = self.settings
        if settings.workers != AUTO:
            return settings.workers, settings.uses_processes
        with self.lock:
            if self._resolved is None:
                from seqify.check import choose_workers

                workers, use_mp, reason = choose_workers(self)
                self._resolved = (workers, bool(use_mp) and workers > 0)
                logger.info(
                    "%s: workers=\"auto\" chose workers=%d, use_multiprocessing=%s: %s",
                    self.name, workers, self._resolved[1], reason,
                )
            return self._resolved

    @property
    def running_pool(self):
        return self._pool

    def pool(self):
        """The running pool for the current settings, started if needed."""
        with self.lock:
            workers, use_mp = self.workers()
            key = (workers, use_mp, self.settings.start_method, self.settings.max_queue_size)
            if self._pool is not None and self._pool_key != key:
                self._close_pool()
            if self._pool is None:
                job = self.source.make_job()
                if workers == 0:
                    pool = InlinePool(job)
                elif use_mp:
                    from seqify.engine.process_pool import ProcessPool
                    from seqify.start_methods import start_method_for

                    # Recycled result slots per worker: what can be in flight
                    # to it, plus the batch being consumed and one spare.
                    slots = min(MAX_SLOTS, -(-max(self.settings.max_queue_size, workers) // workers) + 2)
                    pool = ProcessPool(job, workers, start_method_for(self.settings.start_method), self.name, max_slots=slots)
                else:
                    pool = ThreadPool(job, workers, self.name)
                self._pool, self._pool_key = pool, key
            return self._pool

    def _close_pool(self):
        pool, self._pool, self._pool_key = self._pool, None, None
        if pool is not None:
            pool.close()

    def window(self) -> int:
        workers, _ = self.workers()
        if workers == 0:
            return 1  # inline: build each batch when it is asked for
        return max(self.settings.max_queue_size, workers)

    # -- passes ----------------------------------------------------------------
    def effective_shuffle(self, requested: Optional[bool], force: bool = False) -> bool:
        """The object's own `shuffle` if set, else the caller's (fit's), else False.

        `force`: the caller's choice wins (predict's natural order).
        """
        if not self.source.reorders:
            return False
        own = self.settings.shuffle
        if own is not None and not force:
            return own
        return bool(requested)

    def _claim_pass(self, shuffle: bool) -> Pass:
        with self.lock:
            cursor = self.cursor
            resolved = self.workers()  # resolves "auto" here even without workers, so obj.workers reports it
            workers = resolved[0] if self.source.parallel else 0
            plan = Pass(cursor.epoch, cursor.position, shuffle, workers)
            if self.source.num_batches() is not None:
                # A finite pass owns its epoch from the start, so that a
                # concurrent pass (validation on the same object) gets the next.
                self.cursor = Cursor(cursor.epoch + 1, 0)
            return plan

    def _finish_pass(self, plan: Pass, served: int, completed: bool) -> None:
        with self.lock:
            if self.source.num_batches() is None:
                # Infinite: the next pass continues with the next index.
                if self.cursor == Cursor(plan.epoch, plan.start):
                    self.cursor = Cursor(plan.epoch, plan.start + served)
            elif served == 0 and not completed and self.cursor == Cursor(plan.epoch + 1, 0):
                # Nothing was delivered: the epoch was not used.
                self.cursor = Cursor(plan.epoch, plan.start)

    def iter_epoch(self, shuffle: Optional[bool] = None, *, force: bool = False, delivered: Optional[Delivered] = None) -> Iterator:
        """One pass: the source's batches, in order, built by the workers.

        Args:
            shuffle: the caller's wish (fit's `shuffle`); the object's own
                `shuffle` wins when set, unless `force`.
            force: the caller's `shuffle` wins over the object's.
            delivered: records what the pass delivered, for `give_back`.
        """
        plan = self._claim_pass(self.effective_shuffle(shuffle, force))
        input_wait.note_runner(self)
        served = 0
        completed = False
        if delivered is not None:
            delivered.plan = plan
        submitted = collections.deque()  # items in flight, in delivery order
        try:
            if not self.source.parallel:
                batches = self._inline(plan, submitted)
            else:
                batches = self._parallel(plan, submitted)
            for batch in batches:
                served += 1
                task = submitted.popleft()
                if delivered is not None:
                    delivered.record(task, batch if self.source.keeps_batches else None)
                yield batch
            completed = True
        finally:
            self._finish_pass(plan, served, completed)

    def give_back(self, delivered: Delivered, count: int) -> int:
        """Hands the last `count` batches of a pass back to the source.

        For batches a consumer pulled but never used: a stream serves them
        again first, an infinite source's next pass starts at them. A finite
        random-access pass needs nothing (its epoch is over either way).
        Call it after the pass ended. Returns how many went back.
        """
        with self.lock:
            count = min(count, delivered.count - delivered.given_back)
            if count <= 0 or delivered.plan is None:
                return 0
            if count > len(delivered.entries):
                logger.warning(
                    "seqify: %d batches pulled ahead were not used; only the last %d can be given back.",
                    count, len(delivered.entries),
                )
                count = len(delivered.entries)
            entries = [delivered.entries.pop() for _ in range(count)][::-1]
            delivered.given_back += count
            plan = delivered.plan
            if self.source.num_batches() is None and self.source.reorders:
                # An infinite index source continues where its consumer did.
                if self.cursor.epoch == plan.epoch and self.cursor.position >= plan.start + count:
                    self.cursor = Cursor(plan.epoch, self.cursor.position - count)
            else:
                self.source.give_back(entries, self.state)
            return count

    def _tracked(self, items, submitted):
        for item in items:
            submitted.append(item if type(item) is Task else item.task)
            yield item

    def _parallel(self, plan: Pass, submitted):
        pool = self.pool()
        if getattr(pool, "use_multiprocessing", False) and self.source.reship():
            # Epoch hooks may have changed state that process workers hold
            # a copy of; re-ship it. Sources without hooks never pay this.
            pool.update(self.source.make_job())
        check = getattr(pool, "check", None)
        if check is not None:
            check()  # a worker that died between passes is reported as such
        try:
            # Time spent getting the next task (a stream's next item) is input wait too.
            items = self._tracked(input_wait.timed(self.source.tasks(plan, self.state)), submitted)
            yield from ordered(pool, items, self.window(), self._abandon)
        except errors.WorkerDiedError:
            with self.lock:
                if self._pool is pool:
                    self._close_pool()
            raise

    def _inline(self, plan: Pass, submitted):
        # Nothing to parallelize (an untransformed stream): no window, no
        # handles, just the job on this thread.
        run = self.source.make_job().run
        clock = input_wait.clock
        for task in input_wait.timed(self.source.tasks(plan, self.state)):
            submitted.append(task)
            started = clock()
            try:
                batch = run(task)
            except BaseException:
                self._abandon([(task, NO_HANDLE)])  # a stream keeps the item
                raise
            input_wait.add(clock() - started)
            yield batch

    def _abandon(self, pending) -> None:
        self.source.abandon(pending, self.state)

    def sample_batches(self, count: int) -> list:
        """The first `count` batches, consuming nothing.

        Built on this thread, except for sources whose samples must come
        from the workers (sharded streams keep them for the next pass).
        """
        with self.lock:
            tasks = self.source.sample_tasks(count, self.state, self.workers()[0] if self.source.samples_on_pool else 0)
            pool = self.pool() if self.source.samples_on_pool else InlinePool(self.source.make_job())
            batches = [pool.submit(task).result() for task in tasks]
            self.source.sampled(tasks, batches, self.state)
            return batches

    def close(self) -> None:
        """Stops the pool and the source's threads; the runner stays usable."""
        with self.lock:
            self._close_pool()
            close = getattr(self.state, "close", None)
            if close is not None:
                close()  # streams keep what they buffered; none is lost
