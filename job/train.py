"""`job train`: train one model kind (dcgan, autoencoder, mean, classifier) with the same
launch, checkpoints, storage, grids and metrics.

    accelerate launch -m job train --config cdcgan-mnist run.dir=runs/cdcgan
    accelerate launch -m job train --config classifier-mnist run.dir=runs/classifier
    python -m job train --config debug run.dir=/tmp/run train.steps=20

`trainer.py` holds what every kind shares (the Trainer loop, see its data flow);
`train_gan.py`, `train_autoencoder.py`, `train_mean.py` and `train_classifier.py` hold what
differs. This module only picks one: the kinds import the Trainer, never this module.
"""

from __future__ import annotations

from job import config
from job.train_autoencoder import AutoencoderTrainer
from job.train_classifier import ClassifierTrainer
from job.train_gan import GanTrainer
from job.train_mean import MeanTrainer
from job.trainer import Trainer

TRAINERS: dict[str, type[Trainer]] = {
    "dcgan": GanTrainer,
    "autoencoder": AutoencoderTrainer,
    "mean": MeanTrainer,
    "classifier": ClassifierTrainer,
}


def trainer_for(cfg: config.TrainJob) -> Trainer:
    """The Trainer of the config's model kind, built (validated, resumed, prepared)."""
    return TRAINERS[cfg.model.kind](cfg)


def main(cfg: config.TrainJob) -> int:
    trainer_for(cfg).run()
    return 0
