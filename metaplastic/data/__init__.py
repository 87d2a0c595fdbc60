"""Datasets available offline: small array datasets (digits, mnist1d), Omniglot, folders of images."""

from metaplastic.data.arrays import ARRAY_DATASETS, ArrayDataset, load_array_dataset
from metaplastic.data.images import ImageFolder, load_image_folder, preprocess_image

__all__ = [
    "ARRAY_DATASETS", "ArrayDataset", "ImageFolder", "load_array_dataset", "load_image_folder", "preprocess_image",
]
