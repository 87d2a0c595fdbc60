from metaplastic.meta.checkpoint import load_checkpoint, save_checkpoint
from metaplastic.meta.experiment import Experiment, seeded_generator
from metaplastic.meta.lifetime import iterate_lifetime, run_lifetime
from metaplastic.meta.objective import meta_loss
from metaplastic.meta.trainer import MetaTrainer, train

__all__ = [
    "Experiment",
    "MetaTrainer",
    "iterate_lifetime",
    "load_checkpoint",
    "meta_loss",
    "run_lifetime",
    "save_checkpoint",
    "seeded_generator",
    "train",
]
