"""Which method of a user's class is its forward pass and which its backprop, by name or by signature.

In order: the name `--map` gives; the tutorial's own name (`forward`, `backprop`); else the one method that fits.
For the forward pass that is the one method named like one (`feedForward`, `forward_pass`) that takes one input;
for backprop, the one method taking a gradient and a learning rate (its second parameter named `lr`,
`learn_rate`, ...), else the one method named like a backward pass (`backward`, `backpropagate`). Generators
(`iterate_regions`) are never chosen. A choice made by fit is said in the output (`found`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from parity.check.catalogue import BACKWARD_WORDS, ClassInfo, MethodInfo, class_from_runtime
from parity.check.loader import Impl, closest
from parity.check.names import Choice, Missing, NamesError

# How a gradient parameter is named (d_L_d_out, d_out, dout, dy, grad, delta, error): a backprop's first parameter.
GRADIENT_NAME = re.compile(r"^d(_|[A-Z]|out|y|x|l)|grad|delta|err", re.IGNORECASE)


@dataclass(frozen=True)
class Methods:
    """The user's forward and backprop of one class, and whether backprop takes the learning rate."""

    forward: str
    backprop: str
    backprop_takes_lr: bool
    found: tuple[Choice, ...] = ()  # methods taken because they were the only ones that fit


def resolve_methods(impl: Impl) -> dict[str, Methods]:
    """Each role's methods; NamesError listing every method that could not be found, in every class at once."""
    resolved, problems = {}, []
    for role in impl.roles:
        info = class_from_runtime(impl.classes[role], impl.sources.get(role, impl.label))
        forward, problem_f, note_f = _forward(info, role, impl.mapping.mapped(f"{role}.forward"))
        backprop, problem_b, note_b = _backprop(info, role, impl.mapping.mapped(f"{role}.backprop"), forward)
        problems += [p for p in (problem_f, problem_b) if p]
        if forward and backprop:
            takes_lr = info.methods[backprop].takes(2)
            resolved[role] = Methods(forward, backprop, takes_lr, tuple(c for c in (note_f, note_b) if c))
    if problems:
        raise NamesError(impl.label, problems, impl.catalogue)
    return resolved


def _methods_text(info: ClassInfo) -> str:
    shown = [m.signature() + (" [generator]" if m.generator else "") for m in info.methods.values()]
    return f"methods: {', '.join(shown) or 'none'}"


def _forward(info: ClassInfo, role: str, mapped: str | None) -> tuple[str | None, Missing | None, Choice | None]:
    if mapped is not None:
        if mapped in info.methods:
            return mapped, None, None
        return None, _missing(info, role, "forward", mapped, closest(mapped, info.methods)), None
    if "forward" in info.methods:
        return "forward", None, None
    fits = info.forward_like
    if len(fits) == 1:
        return (
            fits[0].name,
            None,
            Choice(role, "forward", fits[0].name, "the only forward-like method taking one input", info.name),
        )
    ranked = [m.name for m in fits] + closest("forward", _callable(info, 1, {m.name for m in fits}))
    detail = f"{len(fits)} forward-like methods take one input: {', '.join(m.name for m in fits)}; " if fits else ""
    return None, _missing(info, role, "forward", "forward", ranked, detail), None


def _backprop(
    info: ClassInfo, role: str, mapped: str | None, forward: str | None
) -> tuple[str | None, Missing | None, Choice | None]:
    if mapped is not None:
        if mapped in info.methods:
            return mapped, None, None
        return None, _missing(info, role, "backprop", mapped, closest(mapped, info.methods)), None
    if "backprop" in info.methods:
        return "backprop", None, None
    others = [m for m in info.methods.values() if m.name != forward and not m.generator]
    with_lr = [m for m in others if m.takes_lr]
    if len(with_lr) == 1:
        reason = "the only method taking a gradient and a learning rate"
        return with_lr[0].name, None, Choice(role, "backprop", with_lr[0].name, reason, info.name)
    named = [m for m in others if BACKWARD_WORDS.search(m.name) and m.takes(1)]
    if not with_lr and len(named) == 1:
        return named[0].name, None, Choice(role, "backprop", named[0].name, "the only backward-like method", info.name)
    fits: list[MethodInfo] = with_lr or named
    # Past those that fit, the nearest names whose first parameter is named as a gradient is: trying a proposal
    # reads the architecture, which runs only the forward pass, so a helper (`windows(image)`, `max_position()`)
    # would be offered as if it had been tried.
    takes_gradient = [m.name for m in others if m.params and GRADIENT_NAME.search(m.params[0]) and m.name != forward]
    ranked = [m.name for m in fits] + closest(
        "backprop", [n for n in takes_gradient if n not in {m.name for m in fits}]
    )
    detail = ""
    if len(fits) > 1:
        what = "take a gradient and a learning rate" if with_lr else "are named like a backward pass"
        detail = f"{len(fits)} methods {what}: {', '.join(m.name for m in fits)}; "
    return None, _missing(info, role, "backprop", "backprop", ranked, detail), None


def _callable(info: ClassInfo, count: int, left_out: set[str]) -> list[str]:
    """The methods, but `left_out` and generators, that can be called with `count` arguments: the only ones worth
    proposing for a role (one that takes no input is no forward pass, however its name reads)."""
    return [
        name
        for name, method in info.methods.items()
        if name not in left_out and not method.generator and method.takes(count)
    ]


def _missing(info: ClassInfo, role: str, member: str, wanted: str, ranked: list[str], detail: str = "") -> Missing:
    ranked = [name for name in ranked if name != wanted]
    return Missing("method", role, member, wanted, tuple(ranked), detail + _methods_text(info), info.name)
