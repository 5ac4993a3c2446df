"""Retrieval: find the candidates of a query in a national database before the expensive comparison.

==============  ======================================================================
module          what
==============  ======================================================================
``descriptor``  rotation-invariant breech-face descriptor (polar FFT), the
                ``DescriptorModel`` protocol and PCA whitening
``index``       ``VectorIndex``: FAISS index (factory string, stable int64 ids via
                IndexIDMap2, partitions, atomic checksummed snapshots)
``search``      ``Retriever.query``: THE search path (CLI, benchmarks, Ray tests and the
                service): descriptor shortlist -> full-circle rotation screen ->
                re-rank (``PairComparison``; CMC by default) -> index state searched
``sharded``     ``ShardedIndex``: FAISS shards kept current from a database row source,
                snapshots + replay
``executor``    where the work runs, by a setting: ``LocalExecutor`` (this process or a
                process pool; no Ray import) or ``RayExecutor`` (actors and tasks on Ray:
                token auth, loopback / private addresses, no dashboard)
``record``      ``SearchRecord``: replayable, hash-checked record of one search
==============  ======================================================================
"""
