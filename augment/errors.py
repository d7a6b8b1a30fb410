"""One error family for everything a user can get wrong.

Every error a user can cause is an :class:`AugmentError`. The CLI prints its message as one
line and exits with code 2; the message names the culprit and says what is allowed, e.g.
``mask `masks/busi_017.png` is 64x64 but its image is 128x128``.
"""

from __future__ import annotations


class AugmentError(Exception):
    """Base class: bad input from the user (files, config, options). Exit code 2 in the CLI."""


class ConfigError(AugmentError):
    """A config file, CLI option or ``--set`` override is invalid."""


class DataError(AugmentError):
    """A dataset, manifest, image or mask is missing, corrupt or inconsistent."""


class BudgetError(AugmentError):
    """A label budget cannot be drawn from the train split."""
