"""Embedded example data, generated offline from profiles bundled with installed dependencies."""

from __future__ import annotations

from ._anatomy import REGIONS
from ._lymph_node import lymph_node, lymph_node_reference
from ._profiles import CELL_TYPES

__all__ = ["CELL_TYPES", "REGIONS", "lymph_node", "lymph_node_reference"]
