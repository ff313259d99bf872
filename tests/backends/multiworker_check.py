"""One worker of a 2-worker tf.distribute.MultiWorkerMirroredStrategy run.

Usage: multiworker_check.py INDEX PORT0 PORT1 OUT.json
Each worker trains on `ds.shard(2, INDEX)` of one seqify object and records
(with a py_function inside the distributed train step) the id of every batch
it consumed, per epoch, into OUT.json.
"""

import json
import os
import sys

index, port0, port1, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": [f"127.0.0.1:{port0}", f"127.0.0.1:{port1}"]},
    "task": {"type": "worker", "index": index},
})
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Keras 3 cannot train under MultiWorkerMirroredStrategy (keras-team/keras
# issue 20585: its _maybe_symbolic_build reduces a PerReplica eagerly), so the
# multi-worker proof runs on tf_keras, which seqify also supports.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tensorflow as tf  # noqa: E402

keras = tf.keras

import seqify  # noqa: E402
from _batches import make_batch  # noqa: E402  (this folder)

EPOCHS, BATCHES = 2, 6
seen = []


def record(value, rows):
    seen.append((int(value.numpy()), int(rows.numpy())))


class Recording(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x = data[0]
        tf.py_function(record, [tf.cast(x[0, 0], tf.int64), tf.shape(x)[0]], [])
        return super().train_step(data)


strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = Recording()
    model.compile(optimizer="sgd", loss="mse")

with seqify.from_batch_fn(make_batch, BATCHES, workers=2) as data, data.shard(2, index) as shard:
    model.fit(shard, epochs=EPOCHS, verbose=0)

per_epoch = len(seen) // EPOCHS
with open(out, "w") as f:
    json.dump({"index": index, "replicas": strategy.num_replicas_in_sync,
               "epochs": [seen[e * per_epoch:(e + 1) * per_epoch] for e in range(EPOCHS)], "all": seen}, f)
