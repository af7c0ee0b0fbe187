"""Data sources for self-supervised pretraining and labelled evaluation, one module per
format behind a registry (:mod:`fedssl.ssl_core.data.registry`).

Every source yields a :class:`SSLDataset` (:mod:`~fedssl.ssl_core.data.base`). The formats,
in the order a data path's format is inferred: ``mnist1d`` and ``digits`` (generated,
:mod:`~fedssl.ssl_core.data.generated`), ``npz`` (:mod:`~fedssl.ssl_core.data.npz`),
``nifti`` and ``dicom`` (:mod:`~fedssl.ssl_core.data.medical`) and ``imagefolder``
(:mod:`~fedssl.ssl_core.data.image_folder`). The user-facing description of every format is
:mod:`fedssl.ssl_core.datasets`'s docstring.
"""

# importing a format module registers it; the order is the order of inference
from fedssl.ssl_core.data import generated, npz  # noqa: F401  # isort: skip
from fedssl.ssl_core.data import medical, image_folder  # noqa: F401  # isort: skip
from fedssl.ssl_core.data.base import (
    HOLDOUT_FRACTION,
    MAX_CLASSES,
    TRAINING_ONLY,
    DataError,
    SSLDataset,
    evaluation_labels,
    require_labels,
    validate_arrays,
)
from fedssl.ssl_core.data.generated import load_digits, load_mnist1d
from fedssl.ssl_core.data.image_folder import load_image_folder
from fedssl.ssl_core.data.medical import load_dicom, load_nifti
from fedssl.ssl_core.data.npz import load_npz
from fedssl.ssl_core.data.registry import (
    DEFAULT_DATASET,
    FORMATS,
    DataFormat,
    LoadRequest,
    dataset_names,
    generated_names,
    infer_dataset,
    load_dataset,
    register_format,
)

#: every ``--dataset`` choice besides "auto" (the built-in formats)
DATASETS = dataset_names()
#: the data sets generated locally (they read no data path)
GENERATED_DATASETS = generated_names()

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "FORMATS",
    "GENERATED_DATASETS",
    "HOLDOUT_FRACTION",
    "MAX_CLASSES",
    "TRAINING_ONLY",
    "DataError",
    "DataFormat",
    "LoadRequest",
    "SSLDataset",
    "dataset_names",
    "evaluation_labels",
    "generated_names",
    "infer_dataset",
    "load_dataset",
    "load_dicom",
    "load_digits",
    "load_image_folder",
    "load_mnist1d",
    "load_nifti",
    "load_npz",
    "register_format",
    "require_labels",
    "validate_arrays",
]
