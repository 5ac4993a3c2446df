"""Benchmarks on labelled reference sets (behind ``ballistic bench ...``): every pair compared, accuracy
and speed reported, per-pair CSV, JSON summary and plots written next to the JSON.

==============  ======================================================================
module          benchmark
==============  ======================================================================
``cartridge``   all pairs of a labelled breech-face set (CMC counts, AUC, EER, LRs)
``bullet``      land pairs and bullet pairs of labelled bullet sets (ccf, SAM)
``retrieval``   real scans hidden among synthetic distractors (recall@k, latency)
``generalization``  train on some labelled cartridge sets, test on others (firearm CV, transfer,
                leave-one-kit-out): pair model and CMC rule side by side
``draws``       the rotation draws of ``--seeds`` and a figure's spread over them (used by the two above)
==============  ======================================================================
"""
