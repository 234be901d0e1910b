"""`job train`: train one model kind (dcgan, autoencoder, mean, classifier) with the same
launch, checkpoints, storage, grids and metrics.

    accelerate launch -m job train --config cdcgan-mnist run.dir=runs/cdcgan
    accelerate launch -m job train --config classifier-mnist run.dir=runs/classifier
    python -m job train --config debug run.dir=/tmp/run train.steps=20

`trainer.py` holds what every kind shares (the Trainer loop, see its data flow);
`dcgan.py`, `autoencoder.py`, `mean.py` and `classifier.py` beside it hold what
differs; job/core/kinds.py registers each. This module only picks one: the kinds import the
Trainer, never this module.
"""

from __future__ import annotations

from job.core import config
from job.core.kinds import KINDS
from job.training.trainer import Trainer


def trainer_for(cfg: config.TrainJob) -> Trainer:
    """The Trainer registered for the config's model kind (job/core/kinds.py), built (validated,
    resumed, prepared)."""
    return KINDS[cfg.model.kind].trainer_class()(cfg)


def main(cfg: config.TrainJob) -> int:
    trainer_for(cfg).run()
    return 0
