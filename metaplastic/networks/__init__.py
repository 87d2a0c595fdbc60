from metaplastic.networks.activations import get_activation
from metaplastic.networks.mlp import MLP, LayerSpec, Trace, bias_key, weight_key

__all__ = ["MLP", "LayerSpec", "Trace", "bias_key", "get_activation", "weight_key"]
