"""Bullets: land engraved areas (LEAs) from 3D scans, signatures, land and bullet scores.

The pipeline follows the open CSAFE approach (Hare, Hofmann & Carriquiry 2017;
the R packages bulletxtrctr and grooveFinder), written from the papers'
descriptions:

1. ``orient`` - :func:`~ballistic.bullet.orient.estimate_striation_direction` /
   :func:`~ballistic.bullet.orient.orient_striae`: find whether the striae run along x
   or y (with a confidence; an ambiguous scan gets a documented default and a flag, never
   an exception) and turn the scan (a rotation, never a mirror) so that they run along **x**.
   Convention used everywhere below: striae along x, so a *crosscut* is a column (or a
   band of columns) and a *profile* runs down the rows, across the land; profile
   position ``k`` is ``k * spacing_um`` um from row 0.
2. ``crosscut`` - :func:`~ballistic.bullet.crosscut.choose_crosscut`: the position along
   the striae where consecutive crosscuts stay most alike (away from break-off and
   damage); the profile is the mean of a band of columns there.
3. ``grooves`` - :func:`~ballistic.bullet.grooves.locate_grooves`: the groove engraved
   areas (shoulders) at both ends of the profile: departures from a robust quadratic
   fitted to the middle of the land.
4. ``signature`` - :func:`~ballistic.bullet.signature.extract_signature`: between the
   grooves, robust quadratic (curvature) removed, Gaussian high-pass (long cut-off) and
   low-pass (short cut-off), NaN kept as missing.
5. ``align`` - :func:`~ballistic.bullet.align.align_signatures`: NaN-aware
   cross-correlation with a minimum overlap.
6. ``features`` - :func:`~ballistic.bullet.features.land_features` /
   :func:`~ballistic.bullet.features.land_score`: ccf, consecutive matching striae
   (CMS), matches and mismatches per mm, distance D, sum of peaks... and a transparent
   score.
7. ``sam`` - :func:`~ballistic.bullet.sam.bullet_score`: sequence average maximum (SAM)
   over the phase of the land sequences, and the :func:`~ballistic.bullet.sam.phase_test`:
   does the best phase stand out from the bullets' other phases (land correspondence unknown)?
8. ``descriptor`` - :func:`~ballistic.bullet.descriptor.bullet_descriptor`: a
   fixed-length, shift-invariant vector for the retrieval index.

:func:`~ballistic.bullet.signature.land_signature` runs steps 1-4 on one scan (one crosscut);
:func:`~ballistic.bullet.signature.land_signatures` does so at many heights along the land (grooves
made consistent along the land), and
:func:`~ballistic.bullet.features.land_features` given two such lists keeps the best-matching pair of
heights. That is what the benchmark uses: the striae of a land change along its
length, and on Hamby 44 Barrel 1, Bullet 1 Land 6 agrees with its mate only in
a band about 300 um from one end, while its single most stable crosscut lies
elsewhere (ccf 0.38 with the one-crosscut pipeline, 0.87 with the many-heights
one). :func:`ballistic.bench.bullet.run_bullet_bench` is the labelled benchmark behind
``ballistic bench bullet``.

A measured land always gets a signature: weak or ambiguous striae, grooves that
cannot be located or a scan without a stable crosscut lead to documented
fallbacks, and the signature carries ``low_confidence``, ``meta["flags"]`` (why)
and a ``quality`` in [0, 1]. Only scans without a usable land (no measured
points, fewer than 32 measured rows across the land, sampled coarser than the
signature's short cut-off) raise :class:`~ballistic.errors.UnusableLandError`.

Measured (``ballistic bench bullet ../shared/data/bullet --labels
../shared/data/bullet/labels.csv --json out/bullet.json``): land score = ccf;
Hamby 252 (11 lands, 4 same-source pairs of 55) same-source min 0.910 vs
different-source max 0.670; Hamby 44 (12 lands, 6 of 66) 0.871 vs 0.627: AUC 1
in both, no failing pair. Bullet SAM: same barrel 0.934 (Hamby 252, phase 2;
phase test p = 4e-16) and 0.927 (Hamby 44, phase 4; p = 1e-40), the
different-barrel Hamby 252 Barrel 2 land 0.577 and 0.623 (a single land: no
phase test).

Houston (``--labels ../shared/data/bullet/houston/labels.csv --grooves
../shared/data/bullet/houston/grooves.csv``; Sensofar, Ruger LCP, worn
barrels, land correspondence unknown): 30 of 30 lands give signatures (9 were
refused before the mounting tilt was removed from the direction test). SAM
does not separate the barrels (same barrel 0.539-0.721, different barrels
0.484-0.566; none reaches 0.8); the phase test calls the three barrel-A pairs
(p = 2e-5, 5e-7, 5e-12) and no different-barrel pair (p >= 0.51), and misses the
barrel-B pair (p = 0.65). Grooves against the six manual ones: median error 97
um, at most 241 um, ours on average 74 um further out.

All lengths are micrometres (um); NaN means "not measured". Functions are
stateless, take the data first, never mutate their inputs and raise
:class:`~ballistic.errors.BulletError` with a message that says how to fix the problem.
The types passed between the steps (``Crosscut``, ``Grooves``, ``Signature``) and the 1-D
helpers the steps share are in ``profile``. Import from the modules, e.g.
``from ballistic.bullet.signature import land_signatures``.
"""
