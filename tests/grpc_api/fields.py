"""Protobuf message layouts, comparable across processes (no generated module imported here:
two modules declaring the same package cannot share one process)."""

from __future__ import annotations


def message_fields(message: object) -> dict[str, list[int]]:
    """Field name -> [number, type, repeated], nested messages included (maps left out)."""

    def shape(field: object) -> list[int]:
        repeated = getattr(field, "is_repeated", None)
        if repeated is None:  # protobuf before 6
            repeated = field.label == 3  # type: ignore[attr-defined]
        return [field.number, field.type, int(repeated)]  # type: ignore[attr-defined]

    descriptor = message.DESCRIPTOR  # type: ignore[attr-defined]
    found = {f.name: shape(f) for f in descriptor.fields}
    for nested in descriptor.nested_types:
        if not nested.GetOptions().map_entry:
            found.update({f"{nested.name}.{f.name}": shape(f) for f in nested.fields})
    return found
