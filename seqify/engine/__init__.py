"""seqify's parallel engine: pools, shared-memory transport, ordering.

Nothing here imports Keras or TensorFlow: worker processes import only this
package (plus numpy and cloudpickle).
"""
