"""Figures: benchmark plots (:mod:`~ballistic.viz.plots`)."""
