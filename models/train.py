"""``python -m models.train``: train the breech-face embedding (CPU only, seeded, progress bar).

Default: pretrain on synthetic firearms only, fine-tune on every real labelled scan plus synthetic
ones, write the weights that ship in the package (``models/breech_face/weights/bf-learned-1.pt``).

``--folds DIR``: also the cross-validation by firearm (fold k holds out Fadul slide k+1 and, for the
first six folds, one DFSC gun; the synthetic pretraining, which sees no real scan, is shared), each
fold's weights in DIR and the held-out metrics in ``DIR/cv.json``.

``--ablation NAME``: cross-validate a variant instead (see :data:`models.breech_face.experiment.ABLATIONS`).

Examples::

    python -m models.train --seed 0                      # the shipped model (< 30 min on 2 cores)
    python -m models.train --folds out/folds --no-final  # cross-validation only
"""
from models.breech_face.experiment import main

if __name__ == "__main__":
    main()
