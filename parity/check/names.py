"""The names a check looks for and what it says about them: the tutorial's classes and members, the user's own
(`--map`: `Mapping`), a name taken as the only one that fits (`Choice`), and one not found (`Missing`).

Every stage that cannot check an implementation (finding its classes, reading their members, binding their arrays)
raises `ImplError` with what was wrong and what to do; names that do not match raise `NamesError`, an `ImplError`
that carries each mismatch as data (`Missing`) for `parity.check.suggest` to propose the options.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from parity.check.catalogue import Catalogue
from parity.check.layercalls import LayerCall

LAYERS = ("Conv3x3", "MaxPool2", "Softmax")
METHODS = ("forward", "backprop")
MEMBERS = ("forward", "backprop", "filters", "biases", "weights", "last_totals")
# The tutorial's attribute names: parameters, and the cached logits (`last_totals`) read when present.
ATTRIBUTES = {"Conv3x3": ("filters",), "MaxPool2": (), "Softmax": ("weights", "biases", "last_totals")}
# What `--map` may name for each tutorial class: its attributes, and a conv bias when there is one.
ATTRIBUTES_OF = {**ATTRIBUTES, "Conv3x3": ("filters", "biases")}


class ImplError(ValueError):
    """The implementation cannot be checked (not found, does not import, wrong interface); one clear line."""


class LayerMisbehaves(ImplError):
    """One layer acts as no spec layer does (or as another one than at the main image size), found while the layers
    were read: which class, method and spec layer, for a probe to report as that layer's failure."""

    def __init__(self, message: str, cls: str, method: str, layer: str, detail: str) -> None:
        super().__init__(message)
        self.cls, self.method, self.layer = cls, method, layer
        self.detail = detail  # what the method did, to follow `Class.method (layer)`


@dataclass(frozen=True)
class Missing:
    """One name the check looked for and did not find (or found more than once), with the nearest real names."""

    what: str  # "class", "method", "attribute" or "arguments" (a constructor the given arguments do not fit)
    role: str  # the tutorial class or --layers class it belongs to: `Conv3x3`, `ConvA`
    member: str  # `forward`, `backprop`, `filters`, ... ("" for a class or its arguments)
    wanted: str  # the name looked for
    candidates: tuple[str, ...] = ()  # the nearest real names, best first
    detail: str = ""  # what the class has, or why no single candidate could be chosen
    owner: str = ""  # the user's name of the class it belongs to, when that is not `role`
    index: int | None = None  # "arguments": the position of the call in the layer sequence
    corrected: LayerCall | None = None  # "arguments": the call with arguments that fit, when one argument is off

    @property
    def key(self) -> str:
        """The `--map` key that names it: `Conv3x3`, `Softmax.weights`."""
        return f"{self.role}.{self.member}" if self.member else self.role

    def sentence(self) -> str:
        """`no method MaxPool2x2.forward (methods: feedForward(image), getRegions(image), backprop(gradient))`."""
        if self.what == "arguments":
            return f"{self.wanted}: {self.detail}"
        owner = self.wanted if self.what == "class" else f"{self.owner or self.role}.{self.wanted}"
        return f"no {self.what} {owner}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Choice:
    """A class, method or attribute taken because it was the only one that fits, and why (said in the output)."""

    role: str  # the tutorial class or --layers class: `Conv3x3`, `ConvA`
    member: str  # "" for the class itself; `forward`, `backprop`, `filters`, `biases`, `weights`, `last_totals`
    chosen: str  # the user's name
    reason: str  # `the only conv-like class`
    owner: str = ""  # the user's class name, for a member

    def text(self) -> str:
        """`Conv3x3 is conv3x3: the only conv-like class`, `MaxPool.feed is its forward: the only ...`."""
        if not self.member:
            return f"{self.role} is {self.chosen}: {self.reason}"
        verb = "is its" if self.member in METHODS else "holds its"
        what = "logits" if self.member == "last_totals" else self.member
        return f"{self.owner}.{self.chosen} {verb} {what}: {self.reason}"


class NamesError(ImplError):
    """Names that do not match: every `Missing` found at one stage, as data."""

    def __init__(self, label: str, problems: Iterable[Missing], catalogue: Catalogue | None = None) -> None:
        self.label, self.problems, self.catalogue = label, tuple(problems), catalogue
        super().__init__(f"{label}: " + "; ".join(problem.sentence() for problem in self.problems))


@dataclass(frozen=True)
class Mapping:
    """The user's names for classes, methods and attributes: `Softmax=Dense`, `Softmax.weights=W`, `ConvA.filters=k`.

    Keys are a tutorial class (`Conv3x3`, `MaxPool2`, `Softmax`) or a class named in `--layers`, alone (the class's
    own name: tutorial classes only) or with a member: `forward`, `backprop`, `filters`, `biases`, `weights`,
    `last_totals`."""

    names: dict[str, str] = field(default_factory=dict)

    def name(self, key: str) -> str:
        """The user's name for `key` (`Conv3x3`, `Softmax.backprop`, ...): mapped, else the tutorial's own."""
        return self.names.get(key, key.rsplit(".", 1)[-1])

    def mapped(self, key: str) -> str | None:
        """The name `--map` gave `key`, or None."""
        return self.names.get(key)

    def describe(self) -> str:
        """`Softmax=Dense, Softmax.weights=W`, or `tutorial names` when nothing is mapped."""
        return ", ".join(f"{k}={v}" for k, v in self.names.items()) or "tutorial names"

    def with_names(self, names: dict[str, str]) -> Mapping:
        """This mapping with `names` added (a later name for the same key wins)."""
        return Mapping({**self.names, **names})

    def options(self) -> list[str]:
        """The `--map KEY=NAME` options that give this mapping."""
        return [f"--map {key}={value}" for key, value in self.names.items()]

    @classmethod
    def parse(cls, entries: Iterable[str] | None) -> Mapping:
        """Parse `--map` entries: each `KEY=NAME`, several per entry allowed when separated by commas."""
        names: dict[str, str] = {}
        for entry in entries or ():
            for item in filter(None, (part.strip() for part in entry.split(","))):
                key, sep, value = (part.strip() for part in item.partition("="))
                if not sep or not value:
                    raise ImplError(f"--map {item!r}: expected KEY=NAME, e.g. Softmax.weights=W")
                role, dot, member = key.partition(".")
                if not role.isidentifier() or (dot and member not in MEMBERS):
                    raise ImplError(
                        f"--map {item!r}: unknown key {key!r}; expected CLASS or CLASS.MEMBER, MEMBER one of "
                        f"{', '.join(MEMBERS)} (CLASS: {', '.join(LAYERS)}, or a class named in --layers)"
                    )
                if not value.isidentifier():
                    raise ImplError(f"--map {item!r}: {value!r} is not a Python identifier")
                names[key] = value
        return cls(names)

    def check_roles(self, roles: Iterable[str], label: str) -> None:
        """ImplError for a key whose class is not one of `roles` (or renames a class named in --layers)."""
        roles = tuple(roles)
        for key in self.names:
            role, dot, member = key.partition(".")
            if dot and role in ATTRIBUTES and member not in METHODS + ATTRIBUTES_OF[role]:
                raise ImplError(
                    f"--map {key}={self.names[key]}: unknown key {key!r} ({role} has "
                    f"{', '.join(METHODS + ATTRIBUTES_OF[role])})"
                )
            if role not in roles:
                raise ImplError(
                    f"--map {key}={self.names[key]}: unknown class {role!r}; the classes checked are {', '.join(roles)}"
                )
            if not dot and role not in LAYERS:
                raise ImplError(
                    f"--map {key}={self.names[key]}: a class named in --layers is renamed there, not with --map"
                )
