"""Datasets: a registry of loaders returning a :class:`DatasetBundle`."""

from landscape.data import datasets  # noqa: F401  (register the built-in datasets)
from landscape.data.folders import register_image_folder
from landscape.data.registry import (
    DataConfig, DatasetBundle, DatasetInfo, DatasetNotFoundError, check_dataset, dataset_info,
    list_datasets, load_dataset, register_dataset,
)

__all__ = [
    "DataConfig", "DatasetBundle", "DatasetInfo", "DatasetNotFoundError", "check_dataset",
    "dataset_info", "list_datasets", "load_dataset", "register_dataset", "register_image_folder",
]
