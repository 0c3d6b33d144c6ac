"""Engineering code shared by every recipe: configs, registry, Trainer, checkpoints, run directories."""
