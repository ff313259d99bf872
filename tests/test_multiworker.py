"""Multi-worker training: two tf.distribute.MultiWorkerMirroredStrategy workers
on localhost, each fed `ds.shard(2, index)`, together consume every batch
exactly once per epoch, whole (no rows dropped by re-batching).

Keras 3 itself cannot run MultiWorkerMirroredStrategy (keras-team/keras issue
20585), so the workers use tf_keras; see tests/backends/multiworker_check.py.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys

import pytest

CHECK = os.path.join(os.path.dirname(__file__), "backends", "multiworker_check.py")


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.timeout(300)
def test_two_workers_with_shards_consume_every_batch_once_per_epoch(tmp_path):
    if importlib.util.find_spec("tf_keras") is None:
        pytest.skip("tf_keras is not installed (pip install '.[legacy]')")
    ports = _free_ports(2)
    outs = [tmp_path / f"worker{i}.json" for i in range(2)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    procs = [
        subprocess.Popen(
            [sys.executable, CHECK, str(i), str(ports[0]), str(ports[1]), str(outs[i])],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, logs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.read_text()) for out in outs]
    assert all(r["replicas"] == 2 for r in results)
    for epoch in range(2):
        per_worker = [[batch for batch, _ in r["epochs"][epoch]] for r in results]
        assert not set(per_worker[0]) & set(per_worker[1]), per_worker
        assert sorted(per_worker[0] + per_worker[1]) == list(range(6)), per_worker
        rows = {rows for r in results for _, rows in r["epochs"][epoch]}
        assert rows == {4}, "each worker must train on whole batches, not a slice"
