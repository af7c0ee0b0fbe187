"""Data sources for self-supervised pretraining and labelled evaluation.

Every source yields a :class:`SSLDataset`: float32 arrays in channels-first layout
(``(N, C, L)`` for 1-D signals, ``(N, C, H, W)`` for images) plus, where the data has them,
labels. SSL objectives never see labels: a site may train on unlabelled data. Labels are
needed only by the held-out evaluation (linear probe, kNN: :func:`require_labels`) and, in
simulations, by label-skewed partitioning. Labels are either one class per record (``(N,)``
integers; MedMNIST's ``(N, 1)`` is squeezed) or multi-label (``(N, K)`` 0/1 flags, e.g.
ChestMNIST's 14 findings), evaluated by K binary probes (:mod:`fedssl.ssl_core.evaluation`).

Sources (all offline, no network at run time):

- ``mnist1d``: the MNIST-1D benchmark (Greydanus 2020, "Scaling down deep learning"),
  generated locally with the ``mnist1d`` package for any number of samples.
- ``digits``: scikit-learn's 8x8 handwritten digits.
- ``npz``: arrays in the MedMNIST layout: ``train_images`` (``(N, H, W)`` grey or
  ``(N, H, W, C)`` with C = 1 or 3), optional ``train_labels``, optional ``test_images`` /
  ``test_labels`` (``val_*`` arrays are not used); or a single unlabelled ``images`` array
  (with optional ``labels``). Signals use ``train_signals`` / ``test_signals`` instead
  (``(N, C, L)``, or ``(N, L)`` for one channel, e.g. a 12-lead ECG as ``(N, 12, L)``): a 3-D
  ``train_images`` array is always read as greyscale images, and a note says so. Only
  numeric arrays are read: nothing is unpickled.
- ``imagefolder``: ``ROOT/<class>/<image>.png|jpg`` (PNG/JPEG via Pillow), resized to a
  common size, or ``ROOT/train/<class>/...`` and ``ROOT/test/<class>/...``, or unlabelled
  images directly in ``ROOT``. Channels come from the images: greyscale files give 1 channel,
  colour files 3 (RGB; alpha is dropped). A folder mixing both is converted to the mode of
  the majority of its files (a tie goes to RGB, which loses nothing), and a note says so.
- ``dicom`` (``pip install fedssl[dicom]``, pydicom): the ``.dcm`` files of a folder, found
  recursively (or one ``.dcm`` file), in the image folder's layout (``ROOT/<class>/**``,
  ``ROOT/train|test/<class>/**``, or unlabelled). Each frame is one record: the modality
  LUT (rescale slope/intercept) is applied, then the file's window (Window Center/Width;
  else its VOI LUT, then min-max) or, without one, min-max per image; MONOCHROME1 is
  inverted; resized to ``image_size`` like the image folder. Channels come from the data
  (1 grey, 3 colour); a folder mixing both is refused, naming a file of each shape. A
  non-DICOM ``.dcm`` file, a DICOM object without an image (a report, an RT plan), a
  corrupt file, and pixel data compressed in a transfer syntax no installed decoder reads
  (named with its UID) are errors naming the file.
- ``nifti`` (``pip install fedssl[nifti]``, nibabel): ``.nii``/``.nii.gz`` volumes (one file,
  or a folder of them in the same layout), sliced along the last spatial axis into 2-D
  images (a 4-D series gives every slice of every volume), each scaled to [0, 1] by its own
  min-max after the file's scaling (``scl_slope``/``scl_inter``) and resized like DICOM.

Held-out splits of DICOM and NIfTI data are made by series (DICOM ``SeriesInstanceUID``) and
by volume (NIfTI file), so slices of one scan never land on both sides.

The format of a ``--data-path`` is inferred by :func:`infer_dataset` (``.npz`` file -> npz,
``.nii``/``.nii.gz`` file or a folder of them -> nifti, ``.dcm`` file or a folder of them ->
dicom, any other folder -> imagefolder; a folder holding several of these kinds must be
named with ``--dataset``); an explicit dataset that cannot read the path is an error.

Without test arrays, a data set that must supply an evaluation split (``with_test=True``:
the simulator's and the server's) holds out 20 % of its training records, reproducibly from
the seed; a site's data (``with_test=False``) only trains, so it holds nothing out and every
record trains. Each such choice is recorded in :attr:`SSLDataset.notes` and printed by the
commands (:meth:`SSLDataset.describe`).

Bad input (missing paths, wrong shapes, NaN/Inf, empty folders, unreadable images, corrupt
archives, object arrays) raises :class:`DataError` with a message that names the problem and
the file.

The formats live in :mod:`fedssl.ssl_core.data`, one module per format behind a registry
(a new format: :mod:`fedssl.ssl_core.data.registry`); this module keeps the names every
caller imports.
"""

from fedssl.ssl_core.data import (
    DATASETS,
    DEFAULT_DATASET,
    GENERATED_DATASETS,
    HOLDOUT_FRACTION,
    MAX_CLASSES,
    TRAINING_ONLY,
    DataError,
    SSLDataset,
    evaluation_labels,
    infer_dataset,
    load_dataset,
    load_dicom,
    load_digits,
    load_image_folder,
    load_mnist1d,
    load_nifti,
    load_npz,
    require_labels,
    validate_arrays,
)

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "GENERATED_DATASETS",
    "HOLDOUT_FRACTION",
    "MAX_CLASSES",
    "TRAINING_ONLY",
    "DataError",
    "SSLDataset",
    "evaluation_labels",
    "infer_dataset",
    "load_dataset",
    "load_dicom",
    "load_digits",
    "load_image_folder",
    "load_mnist1d",
    "load_nifti",
    "load_npz",
    "require_labels",
    "validate_arrays",
]
