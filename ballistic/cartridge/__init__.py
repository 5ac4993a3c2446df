"""Cartridge cases: the breech face and firing-pin impressions, from 3D scans and 2D images.

==================  ======================================================================
module              what
==================  ======================================================================
``breech_face``     find the breech face in a raw scan, level, band-pass, resample:
                    :func:`preprocess_cartridge`
``cmc``             Congruent Matching Cells comparison of two breech faces (register,
                    cells, decision, pair)
``firing_pin``      firing-pin impressions: find, extract, compare, fuse with the breech face
``image2d``         2D ring-light photographs: find the breech face, flatten, compare by CMC
``synth``           seeded synthetic firearms and firings (scale tests, retrieval benchmark)
==================  ======================================================================
"""
