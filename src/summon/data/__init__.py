"""Data: dataset specs, loading (local files, catalog, hub), featurizers and dynamic-padding collation."""

from summon.data.catalog import CATALOG, DATA_DIR_ENV, resolve_data_dir
from summon.data.features import (
    IGNORE_INDEX,
    FeatureDataset,
    Featurizer,
    NgramFeaturizer,
    TokenizerFeaturizer,
    collate,
)
from summon.data.loading import infer_labels, load_split
from summon.data.spec import TASKS, DatasetSpec, TaskData

__all__ = [
    "CATALOG", "DATA_DIR_ENV", "IGNORE_INDEX", "TASKS", "DatasetSpec", "FeatureDataset", "Featurizer",
    "NgramFeaturizer", "TaskData", "TokenizerFeaturizer", "collate", "infer_labels", "load_split",
    "resolve_data_dir",
]
