"""Replicas: several workers of one model (`replicas`, `max_replicas`), each its own scheduling
slot. The first has the model's name; the others `name#2`, `name#3`, ... (`#` is never part of a
model name, so a client cannot ask for one replica). How many a model may have is a setting
(`settings.MAX_REPLICAS`)."""

from __future__ import annotations

MARK = "#"


def slot_names(name: str, replicas: int, max_replicas: int | None) -> list[str]:
    """Every slot of a model, the first one its own name."""
    count = max(replicas, max_replicas or replicas)
    return [name, *(f"{name}{MARK}{i}" for i in range(2, count + 1))]


def model_of(slot: str) -> str:
    """The model a slot serves (a replica's is the model's name, which its worker serves)."""
    return slot.partition(MARK)[0]


def index_of(slot: str) -> int:
    """1 for the model's own slot, n for `name#n`."""
    _, mark, index = slot.partition(MARK)
    return int(index) if mark else 1
