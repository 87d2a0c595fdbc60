"""Datasets available offline: small array datasets (digits, mnist1d) and Omniglot."""

from metaplastic.data.arrays import ARRAY_DATASETS, ArrayDataset, load_array_dataset

__all__ = ["ARRAY_DATASETS", "ArrayDataset", "load_array_dataset"]
