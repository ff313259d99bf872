"""`@seqify.threadsafe`: one item per caller across threads; refuses other processes and pickling."""

import multiprocessing
import pickle
import threading
import time

import cloudpickle
import pytest

import seqify
from conftest import make_batch


@seqify.threadsafe
def numbers(n):
    """Yields 0..n-1, inviting thread switches mid-step."""
    for i in range(n):
        time.sleep(0)
        yield i


def _pull_all(iterator, out, barrier):
    barrier.wait()
    for value in iterator:
        out.append(value)


def test_several_threads_sharing_one_generator_get_each_item_exactly_once():
    n, num_threads = 3000, 6
    iterator = numbers(n)
    barrier = threading.Barrier(num_threads)
    results = [[] for _ in range(num_threads)]
    threads = [threading.Thread(target=_pull_all, args=(iterator, out, barrier)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    everything = [v for out in results for v in out]
    assert len(everything) == n
    assert sorted(everything) == list(range(n))
    for out in results:  # each thread sees its share in stream order
        assert out == sorted(out)


def test_each_call_returns_an_independent_generator():
    a, b = numbers(3), numbers(3)
    assert next(a) == 0
    assert list(b) == [0, 1, 2]
    assert list(a) == [1, 2]


def test_decorator_keeps_the_function_name_and_arguments():
    assert numbers.__name__ == "numbers"
    assert list(numbers(4)) == [0, 1, 2, 3]


def test_decorating_a_non_callable_is_a_type_error():
    with pytest.raises(TypeError, match="generator function"):
        seqify.threadsafe(42)


@pytest.mark.timeout(60)
def test_using_it_in_a_forked_child_raises_a_clear_runtime_error():
    iterator = numbers(10)
    assert next(iterator) == 0
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def child():
        try:
            sender.send(("no error", next(iterator)))
        except BaseException as exc:
            sender.send((type(exc).__name__, str(exc)))

    process = context.Process(target=child, daemon=True)
    process.start()
    try:
        assert receiver.poll(20)
        kind, message = receiver.recv()
    finally:
        process.join(5)
    assert kind == "RuntimeError"
    assert "numbers" in message
    assert "duplicate" in message
    assert "seqify.from_generator" in message  # says what to do instead
    assert next(iterator) == 1  # the parent's stream is untouched


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_pickling_it_is_a_type_error_pointing_to_from_generator(dumps):
    iterator = numbers(3)
    with pytest.raises(TypeError) as info:
        dumps(iterator)
    message = str(info.value)
    assert "numbers" in message
    assert "seqify.from_generator" in message


def test_a_threadsafe_generator_feeds_from_generator_in_order(model):
    @seqify.threadsafe
    def stream():
        i = 0
        while True:
            yield make_batch(i)
            i += 1

    with seqify.from_generator(stream(), steps_per_epoch=3, transform=lambda b: b, workers=2) as ds:
        model.fit(ds, epochs=2, verbose=0)
    assert model.trained == [0, 1, 2, 3, 4, 5]
