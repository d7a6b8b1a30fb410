"""Data layer: sources, the canonical manifest, splits and budgets, torch and HF views."""

from augment.data.manifest import COLUMNS, counts_table, load_data, read_manifest, validate_manifest
from augment.data.splits import select_budget, stratified_group_split

__all__ = [
    "COLUMNS",
    "counts_table",
    "load_data",
    "read_manifest",
    "select_budget",
    "stratified_group_split",
    "validate_manifest",
]
