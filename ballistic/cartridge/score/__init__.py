"""Multi-feature pair score of two breech faces, beside the CMC count (issue 10).

==============  ==========================================================================
module          what
==============  ==========================================================================
``features``    :func:`pair_features`: features of a compared pair, from what the CMC
                comparison already computed (registration, cells, DBSCAN consensus of the
                cells' translations)
``model``       :class:`PairModel`: a small logistic model on those features, fitted by
                firearm-grouped cross-validation, with its calibrated likelihood ratio;
                the shipped model is ``data/pair_model.json`` (:func:`default_model`)
==============  ==========================================================================

Neither module imports the CMC comparison: :mod:`ballistic.cartridge.cmc.pair` calls them.
"""
