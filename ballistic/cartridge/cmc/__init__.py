"""Congruent Matching Cells (CMC): comparison of two breech faces, in the order of the method.

==============  ==========================================================================
module          step
==============  ==========================================================================
``params``      :class:`CMCParams` (every tuning value) and :func:`prepare` (the resampled,
                centred views a surface is compared with)
``fft``         the Fourier transforms of the masked NCC (:func:`rfft2`, :func:`irfft2`): torch's MKL FFT
                when it imports, else scipy's pocketfft (``$BALLISTIC_FFT``)
``register``    1. whole-surface registration over the full circle: :func:`masked_ncc`,
                :func:`search_rotation`, :func:`local_search`, :func:`register_global`
``cells``       2. :func:`cell_division` and :func:`compare_cells`: each reference cell
                searched in the registered target
``decision``    3. :func:`cmc_count` (Song 2013), :func:`high_cmc_count` (Tong 2015) and
                :func:`decide` (identification when C >= 6)
``pair``        :func:`compare_pair`: both directions, the pair's count and similarity
==============  ==========================================================================

Import from the modules, e.g. ``from ballistic.cartridge.cmc.pair import compare_pair``
(also ``ballistic.compare_pair``).
"""
