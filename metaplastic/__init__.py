"""metaplastic: meta-learning local plasticity rules with PyTorch."""

__version__ = "0.1.0"
