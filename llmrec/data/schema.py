"""The canonical data schema every loader produces and every model consumes.

An ``Interaction`` is one event (who did what to which item, when); an ``Item`` is one catalog
entry; a ``Catalog`` is the ordered item table. The position of an item in the catalog (its
*item index*, 0..N-1) is the column index of every score matrix in llmrec, and ties in score are
broken by it (lower index first), the same for every model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

# Actions that the loaders know; tabular logs may use others, they are kept verbatim.
KNOWN_ACTIONS = ("rate", "view", "cart", "purchase", "review", "click")


@dataclass(frozen=True)
class Interaction:
    """One event: ``user_id`` did ``action`` to ``item_id`` at ``timestamp`` (seconds)."""

    user_id: str
    item_id: str
    timestamp: int
    action: str = "rate"
    rating: float | None = None  # explicit feedback where the source has it (MovieLens stars, Amazon rating)


@dataclass(frozen=True)
class Item:
    """One catalog entry. ``attributes`` holds extra string fields such as ``year`` or ``brand``."""

    item_id: str
    title: str
    categories: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def year(self) -> str | None:
        return self.attributes.get("year") or None

    def display_title(self) -> str:
        """Title as shown to a language model: ``Heat (1995)`` when a year is known."""
        year = self.year
        if year and not self.title.endswith(f"({year})"):
            return f"{self.title} ({year})"
        return self.title


class Catalog:
    """An ordered, immutable item table with O(1) look-up from item id to item index."""

    def __init__(self, items: Iterable[Item]):
        self._items: tuple[Item, ...] = tuple(items)
        self._index: dict[str, int] = {}
        for i, item in enumerate(self._items):
            if item.item_id in self._index:
                raise ValueError(f"duplicate item id {item.item_id!r} in catalog (positions {self._index[item.item_id]} and {i})")
            self._index[item.item_id] = i

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self._items)

    def __getitem__(self, index: int) -> Item:
        return self._items[index]

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    @property
    def items(self) -> tuple[Item, ...]:
        return self._items

    @property
    def item_ids(self) -> list[str]:
        return [item.item_id for item in self._items]

    def index(self, item_id: str) -> int:
        """Item index of ``item_id``; raises ``KeyError`` naming the id when it is unknown."""
        try:
            return self._index[item_id]
        except KeyError:
            raise KeyError(f"item id {item_id!r} is not in the catalog ({len(self)} items)") from None

    def get(self, item_id: str) -> Item:
        return self._items[self.index(item_id)]

    def indices(self, item_ids: Sequence[str]) -> list[int]:
        return [self.index(i) for i in item_ids]

    def categories(self) -> list[str]:
        """Every category in the catalog, sorted, without repeats (the tag vocabulary)."""
        return sorted({c for item in self._items for c in item.categories})


@dataclass(frozen=True)
class UserSequence:
    """One user's chronologically sorted interactions, as catalog item indices plus their context.

    All lists have the same length; position 0 is the oldest event.
    """

    user_id: str
    items: tuple[int, ...]
    timestamps: tuple[int, ...]
    actions: tuple[str, ...]
    ratings: tuple[float | None, ...]

    def __len__(self) -> int:
        return len(self.items)

    def prefix(self, length: int) -> UserSequence:
        """The first ``length`` events (the history seen before position ``length``)."""
        return UserSequence(
            self.user_id,
            self.items[:length],
            self.timestamps[:length],
            self.actions[:length],
            self.ratings[:length],
        )


@dataclass(frozen=True)
class EvalCase:
    """One evaluation query: the model sees ``history`` and must rank ``target`` (an item index)."""

    user_id: str
    history: UserSequence
    target: int
