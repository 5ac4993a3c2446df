"""Preprocessing shared by every kind of evidence (mask-aware filters, resampling, rotation).

:mod:`ballistic.preprocess.filters` holds the filters, :mod:`ballistic.preprocess.form` the
least-squares form removal (a projection: applying it twice changes nothing); what is specific to one kind of
evidence (finding the breech face, the firing pin, the primer in a photograph) lives
with that evidence under :mod:`ballistic.cartridge` and :mod:`ballistic.bullet`.
"""
