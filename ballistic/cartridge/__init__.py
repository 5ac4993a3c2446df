"""Cartridge cases: the breech face and firing-pin impressions, from 3D scans and 2D images.

==================  ======================================================================
module              what
==================  ======================================================================
``breech_face``     find the breech face in a raw scan; one normalisation for raw and
                    processed scans: :func:`preprocess_cartridge`
``normalise``       its parameters and steps (islands, roll-off bands), provenance version
``cmc``             Congruent Matching Cells comparison of two breech faces (register,
                    cells, decision, pair)
``score``           the multi-feature pair score beside the CMC count (features, model)
``firing_pin``      firing-pin impressions: find, extract, compare, fuse with the breech face
``image2d``         2D ring-light photographs: find the breech face, flatten, compare by CMC
``synth``           seeded synthetic firearms and firings (scale tests, retrieval benchmark)
==================  ======================================================================
"""
