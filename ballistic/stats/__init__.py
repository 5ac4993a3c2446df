"""Statistics: the pairwise-complete correlation behind every score (:mod:`~ballistic.stats.correlation`),
accuracy metrics (:mod:`~ballistic.stats.metrics`) and score-to-likelihood-ratio calibration
(:mod:`~ballistic.stats.calibrate`)."""
