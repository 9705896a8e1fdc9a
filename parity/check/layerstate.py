"""A user layer's state, taken and put back without copying the object: so a layer run alone at a step (the adapter's
`run_layer`) runs from the state it began that step in, and the whole-network run sees one call of it per step."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_UNSET = object()  # a slot with no value: put back by deleting what was set since


@dataclass
class LayerState:
    """A user layer's state, taken without copying the object itself (which may hold what cannot be copied, or refer
    back to itself): its attribute bindings, in its `__dict__` and its `__slots__`, the very objects, so identities,
    aliases and bound methods stay; and a copy of every writable array they hold, directly or in a list, tuple or
    dict, to be written back in place, so arrays that are views into one buffer stay so; and the items of every
    list, dict or set they hold, put back in the same container (a counter in a dict, a history in a list), and so on
    into the containers those hold (a dict of lists), each container and array once however often it is reached."""

    bindings: dict[str, object] | None
    arrays: list[tuple[np.ndarray, np.ndarray]]
    contents: list[tuple[list | dict | set, list | dict | set]] = field(default_factory=list)
    slots: dict[str, object] = field(default_factory=dict)  # by slot name, _UNSET where it held nothing

    @classmethod
    def of(cls, obj: object) -> LayerState:
        """The state `obj` is in now."""
        attributes = getattr(obj, "__dict__", None)
        slots = {name: getattr(obj, name, _UNSET) for name in _slot_names(type(obj))}
        values = [*(attributes or {}).values(), *(value for value in slots.values() if value is not _UNSET)]
        arrays, contents, seen = [], [], set()
        pending = list(values)
        while pending:  # a walk, not a recursion: a container holding itself, or nested deep, is fine
            value = pending.pop()
            if id(value) in seen or not isinstance(value, (np.ndarray, list, tuple, dict, set)):
                continue
            seen.add(id(value))
            if isinstance(value, np.ndarray):
                if value.flags.writeable:
                    arrays.append((value, value.copy()))
                continue
            if not isinstance(value, tuple):
                contents.append((value, value.copy()))  # the items, not copies of them
            pending.extend(value.values() if isinstance(value, dict) else value)
        return cls(None if attributes is None else dict(attributes), arrays, contents, slots)

    def put_back(self, obj: object) -> None:
        """Put `obj` back in this state."""
        if self.bindings is not None:
            attributes = vars(obj)
            attributes.clear()
            attributes.update(self.bindings)
        for name, value in self.slots.items():
            if value is not _UNSET:
                setattr(obj, name, value)
            elif hasattr(obj, name):
                delattr(obj, name)
        for container, items in self.contents:
            container.clear()
            if isinstance(container, list):
                container.extend(items)
            else:
                container.update(items)
        for array, saved in self.arrays:
            array[...] = saved


def _slot_names(cls: type) -> list[str]:
    """The attribute names the `__slots__` of `cls` and its bases declare, as stored (a private `__x` of class `C`
    is `_C__x`)."""
    names: list[str] = []
    for klass in cls.__mro__:
        declared = klass.__dict__.get("__slots__", ())
        for name in (declared,) if isinstance(declared, str) else declared:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{name}"
            if name not in names:
                names.append(name)
    return names
