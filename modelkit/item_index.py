"""Dense, stable mapping between external item ids (strings) and the rows of a model."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

UNKNOWN_ITEM = -1


class ItemIndex:
    """Dense, stable mapping between external item ids (strings) and row indices of the model."""

    def __init__(self, item_ids: Iterable[str]) -> None:
        ids = np.asarray(list(item_ids), dtype=object)
        self._index: dict[str, int] = {}
        for position, item_id in enumerate(ids):
            if not isinstance(item_id, str):
                raise TypeError(f"item ids must be strings, got {type(item_id).__name__}")
            if item_id in self._index:
                raise ValueError(f"duplicate item id {item_id!r} in item index")
            self._index[item_id] = position
        self.ids = ids  # (n_items,) index order

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def get(self, item_id: str) -> int:
        """Index of one item, or UNKNOWN_ITEM."""
        return self._index.get(item_id, UNKNOWN_ITEM)

    def lookup(self, item_ids: Iterable[str]) -> np.ndarray:
        """Indices for many items, UNKNOWN_ITEM where an id is not in the index."""
        index = self._index
        return np.fromiter((index.get(i, UNKNOWN_ITEM) for i in item_ids), dtype=np.int64)

    def extended(self, new_ids: Iterable[str]) -> ItemIndex:
        """A new index with unseen ids appended after the existing rows (existing rows keep their index)."""
        fresh = [i for i in dict.fromkeys(new_ids) if i not in self._index]
        return ItemIndex([*self.ids.tolist(), *fresh])

    @classmethod
    def from_events(cls, item_ids: Iterable[str]) -> ItemIndex:
        """Index in order of first appearance."""
        return cls(dict.fromkeys(item_ids))
