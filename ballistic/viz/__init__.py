"""Figures and pictures: the explanation figure of a comparison (:mod:`~ballistic.viz.explain`), shaded
relief and PNG encoding of surfaces (:mod:`~ballistic.viz.render`), benchmark plots
(:mod:`~ballistic.viz.plots`). matplotlib is imported only when a figure is drawn."""
