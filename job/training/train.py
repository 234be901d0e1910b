"""`job train`: train one model kind (dcgan, autoencoder, mean, classifier) with the same
launch, checkpoints, storage, grids and metrics.

    accelerate launch -m job train --config cdcgan-mnist run.dir=runs/cdcgan
    accelerate launch -m job train --config classifier-mnist run.dir=runs/classifier
    python -m job train --config debug run.dir=/tmp/run train.steps=20

`trainer.py` holds what every kind shares (the Trainer loop, see its data flow);
`train_gan.py`, `train_autoencoder.py`, `train_mean.py` and `train_classifier.py` hold what
differs; job/kinds.py registers each. This module only picks one: the kinds import the
Trainer, never this module.
"""

from __future__ import annotations

from job import config
from job.kinds import KINDS
from job.trainer import Trainer


def trainer_for(cfg: config.TrainJob) -> Trainer:
    """The Trainer registered for the config's model kind (job/kinds.py), built (validated,
    resumed, prepared)."""
    return KINDS[cfg.model.kind].trainer_class()(cfg)


def main(cfg: config.TrainJob) -> int:
    trainer_for(cfg).run()
    return 0
