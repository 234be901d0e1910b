"""`job train`: the command (train), the loop every kind shares (trainer: resume,
preemption, checkpoints, metrics, progress), the optimisation steps (steps), checkpoint
folders (checkpoint), metrics.jsonl (metrics), and one Trainer per model kind (dcgan,
autoencoder, mean, classifier; registered in job/core/kinds.py)."""
