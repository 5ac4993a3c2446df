"""Learned breech-face embedding (torch, CPU): polar input, network, training, the registered descriptor.

Importing this package does not import torch; :mod:`models.breech_face.descriptor` registers
``learned`` in the ``ballistic.descriptors`` entry-point group. See ``MODEL_CARD.md``.
"""
