"""Retrieval: find the candidates of a query in a national database before the expensive comparison.

==============  ======================================================================
module          what
==============  ======================================================================
``descriptor``  rotation-invariant breech-face descriptor (polar FFT), the
                ``DescriptorModel`` protocol and PCA whitening
``index``       ``VectorIndex``: FAISS index (factory string, stable int64 ids via
                IndexIDMap2, partitions, atomic checksummed snapshots)
``search``      ``Retriever``: descriptor shortlist -> full-circle rotation screen ->
                CMC re-rank
``sharded``     ``ShardedIndex``: FAISS shards and CMC re-ranking on Ray (token auth,
                loopback, no dashboard) or in-process
``record``      ``SearchRecord``: replayable, hash-checked record of one search
==============  ======================================================================
"""
