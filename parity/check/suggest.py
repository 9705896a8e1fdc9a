"""When names do not match: every mismatch at once, what the classes have, and options that were tried and fit.

Each `Missing` gets a fix from the nearest real name (`--map Conv3x3.forward=feedForward`), the layers a script
constructs (`--layers` from `Model.__init__` in cnn.py), or the classes' constructors. The fixed options are tried
(loaded and their architecture read, as `check` would) and fixed again until they fit or nothing more can be
fixed, so the options printed are ones that give a verdict; every mismatch met on the way is listed. A proposal
never holds a placeholder: where no real name or number can be found, it says so instead.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from parity.check.catalogue import Catalogue, ClassInfo, Unknown
from parity.check.infer import infer_architecture, shape_after
from parity.check.layercalls import LayerCall, format_layers
from parity.check.loader import KIND_WORDS, describe_class, load_impl
from parity.check.names import LAYERS, ImplError, Mapping, NamesError
from parity.check.usercode import DEFAULT_TIMEOUT, ImplCrash

MAX_ROUNDS = 8  # each round fixes at least one mismatch; a network has a handful of classes and members
FIRST_FILTERS, NEXT_FILTERS, NUM_CLASSES = 8, 16, 10
# Constructor parameters cnn-parity can fill, by what their names say.
_FILTERS = re.compile(r"filter|kernels?_?num|num_?kernels?|out_?chan|^n?_?f$|^nf$|^num_?f", re.IGNORECASE)
_CHANNELS = re.compile(r"chan|depth|^c_?in$|^in_?c|^c$", re.IGNORECASE)
_KERNEL = re.compile(r"size|^k$|ksize", re.IGNORECASE)
_INPUTS = re.compile(r"input|^in_|^n_?in|fan_?in|^in$", re.IGNORECASE)
_OUTPUTS = re.compile(r"node|out|class|unit|^n_?out", re.IGNORECASE)


@dataclass
class Proposal:
    """Options to try: the `--map` names and the `--layers` sequence, and where each came from."""

    mapping: Mapping
    calls: tuple[LayerCall, ...] | None
    sources: list[str] = field(default_factory=list)  # `--layers: the layers cnn.py constructs in Model.__init__`

    def options(self) -> list[str]:
        """`--layers '...'` and `--map KEY=NAME` options."""
        layers = ["--layers " + shlex.quote(format_layers(self.calls))] if self.calls is not None else []
        return layers + self.mapping.options()


def names_message(
    error: NamesError,
    label: str,
    mapping: Mapping,
    calls: tuple[LayerCall, ...] | None,
    image_shape: tuple[int, int],
    command: str,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> str:
    """The whole message for names that do not match: the mismatches, the classes found, the options to rerun with
    (tried here first), as `command` plus those options."""
    problems, catalogue = list(error.problems), error.catalogue
    proposal, latest, failure, fitted = Proposal(mapping, calls), list(error.problems), "", False
    for _ in range(MAX_ROUNDS):
        fixed = _fix(proposal, latest, catalogue, label, image_shape, timeout)
        if fixed is None:
            failure = "; ".join(problem.sentence() for problem in latest)
            break
        proposal = fixed
        try:
            impl = load_impl(label, proposal.mapping, proposal.calls, timeout)
            infer_architecture(impl, image_shape, timeout=timeout)
            fitted = True
            break
        except NamesError as again:
            latest = list(again.problems)
            catalogue = again.catalogue or catalogue
            problems += [problem for problem in latest if problem not in problems]
        except (ImplError, ImplCrash) as other:
            failure = str(other)
            break
    return _render(label, problems, catalogue, proposal, fitted, failure, command, mapping, calls)


def _render(label, problems, catalogue, proposal, fitted, failure, command, mapping, calls) -> str:
    count = len(problems)
    changed = proposal.mapping != mapping or proposal.calls != calls
    head = f"{label}: the layers cannot be built or driven as they are: {count} mismatch{'es' if count != 1 else ''}"
    if fitted:
        head += "; rerun with the options at the end (tried here: they fit)"
    elif changed:
        head += "; the options at the end fix part of it (see the last line)"
    elif catalogue is None or not catalogue.classes:
        head += "; check drives layer objects (classes with forward and backprop, as the tutorial's): none is there"
    else:
        head += "; pass --layers and --map from the classes found (listed below)"
    lines = [head]
    lines += [f"  - {problem.sentence()}" for problem in problems]
    if catalogue is not None and catalogue.classes:
        lines.append("  classes found:")
        for info in catalogue.classes.values():
            note = "" if info.is_layer else "  (not a layer: no forward taking one input)"
            lines.append(f"    {describe_class(info)}{note}")
        sequence = catalogue.best_sequence()
        if sequence is not None:
            lines.append(f"  {sequence.where} constructs: {', '.join(sequence.source)}")
            if sequence.unknown:
                lines.append(
                    "  (--layers takes literal arguments: numbers, strings, booleans, None, tuples, integer arithmetic)"
                )
    if changed:
        lines.append("  rerun with:")
        lines.append(f"    {command} {' '.join(proposal.options())}")
        lines += [f"    ({source})" for source in proposal.sources]
    if changed and not fitted and failure:
        lines.append(f"  still not fitting: {failure}")
    return "\n".join(lines)


def _fix(proposal, problems, catalogue, label, image_shape, timeout) -> Proposal | None:
    """The proposal with every problem of this round fixed, or None when one cannot be."""
    mapping, calls, sources = proposal.mapping, proposal.calls, list(proposal.sources)
    names: dict[str, str] = {}
    for problem in problems:
        if problem.what == "class" and calls is None:
            switched = _layers_instead(catalogue, mapping, label, image_shape, timeout)
            if switched is not None:
                return switched
            if not problem.candidates:
                return None
            names[problem.role] = problem.candidates[0]
        elif problem.what == "class":
            if not problem.candidates:
                return None
            calls = tuple(
                LayerCall(problem.candidates[0], c.args, c.kwargs) if c.cls == problem.role else c for c in calls
            )
            sources.append(f"--layers: {problem.role} is {problem.candidates[0]} here")
        elif problem.what in ("method", "attribute"):
            if not problem.candidates:
                return None
            names[problem.key] = problem.candidates[0]
        elif problem.what == "arguments":
            if problem.corrected is not None and calls is not None:
                calls = tuple(problem.corrected if i == problem.index else c for i, c in enumerate(calls))
                sources.append(f"--layers: {problem.corrected.text()} instead of {problem.wanted}")
                continue
            switched = _layers_instead(catalogue, mapping, label, image_shape, timeout)
            if switched is None or switched.calls == calls:
                return None
            return switched
    return Proposal(mapping.with_names(names), calls, sources)


def _layers_instead(catalogue, mapping, label, image_shape, timeout) -> Proposal | None:
    """`--layers` from what a script constructs, else from the constructors of the classes found (with the member
    names `--map` gave carried over where their class is in it)."""
    if catalogue is None:
        return None
    sequence = catalogue.best_sequence()
    if sequence is not None and not sequence.unknown:
        calls = sequence.calls
        source = f"--layers: the layers {sequence.where} constructs"
    elif sequence is not None and (filled := _filled_unknowns(sequence, mapping, label, image_shape, timeout)):
        calls, value = filled
        unknowns = sorted({repr(v) for call in sequence.calls for v in _values(call) if isinstance(v, Unknown)})
        source = (
            f"--layers: the layers {sequence.where} constructs, with {'None' if value is None else 'an empty string'}"
            f" for {', '.join(unknowns)}, which are no literals; the constructors take that"
        )
    else:
        calls = _from_constructors(catalogue, label, image_shape, timeout)
        if calls is None:
            return None
        source = "--layers: built from the classes' constructors; check that the order is your network's"
    return Proposal(_carried(mapping, calls), calls, [source])


def _values(call: LayerCall) -> tuple:
    return call.args + tuple(value for _, value in call.kwargs)


def _filled_unknowns(sequence, mapping, label, image_shape, timeout) -> tuple[tuple[LayerCall, ...], object] | None:
    """The script's layers with each argument that is no literal replaced by one value (None, then an empty
    string: what code that takes 'a loaded array, or anything else for random weights' accepts), the first that
    builds a network; None when neither does."""

    def filled(value: object) -> tuple[LayerCall, ...]:
        def one(v):
            return value if isinstance(v, Unknown) else v

        return tuple(
            LayerCall(c.cls, tuple(one(v) for v in c.args), tuple((k, one(v)) for k, v in c.kwargs))
            for c in sequence.calls
        )

    for value in (None, ""):
        calls = filled(value)
        try:
            impl = load_impl(label, _carried(mapping, calls), calls, timeout)
            infer_architecture(impl, image_shape, timeout=timeout)
        except NamesError as error:  # a classifier for another number of classes still counts: it is fixed next
            if all(problem.corrected is not None for problem in error.problems):
                return calls, value
            continue
        except (ImplError, ImplCrash):
            continue
        return calls, value
    return None


def _carried(mapping: Mapping, calls: tuple[LayerCall, ...]) -> Mapping:
    """Member names given for a tutorial class (`Softmax.weights=W`), re-keyed to the class `--layers` uses."""
    classes = {call.cls for call in calls}
    names = {}
    for key, value in mapping.names.items():
        role, dot, member = key.partition(".")
        owner = mapping.name(role) if role in LAYERS else role
        if dot and owner in classes:
            names[f"{owner}.{member}"] = value
    return Mapping(names)


def _from_constructors(catalogue: Catalogue, label, image_shape, timeout) -> tuple[LayerCall, ...] | None:
    """conv, (ReLU), pool for each conv class (one taking no channel count first), then the classifier; every
    argument filled from what its name says, the classifier's input length from the shapes before it."""
    layers = catalogue.layers()
    by_kind = {kind: [c for c in layers if words.search(c.name)] for kind, words in KIND_WORDS.items()}
    relus = [c for c in layers if re.search(r"relu", c.name, re.IGNORECASE)]
    if not by_kind["conv"] or not by_kind["dense"]:
        return None
    convs = sorted(by_kind["conv"], key=lambda c: any(_CHANNELS.search(p) for p in _params(c)))
    calls, channels = [], 1
    for position, conv in enumerate(convs):
        filters = FIRST_FILTERS if position == 0 else NEXT_FILTERS
        call = _filled(conv, {"filters": filters, "channels": channels, "kernel": 3})
        if call is None:
            return None
        calls.append(call)
        channels = filters
        calls += [LayerCall(relus[0].name)] if relus and not _params(relus[0]) else []
        if by_kind["pool"]:
            pool = _filled(by_kind["pool"][0], {"kernel": 2})
            if pool is None:
                return None
            calls.append(pool)
    try:
        impl = load_impl(label, Mapping(), tuple(calls) + (LayerCall(by_kind["dense"][0].name),), timeout)
        shape = shape_after(impl, tuple(calls), image_shape, timeout)
    except (ImplError, ImplCrash):
        return None
    inputs = 1
    for size in shape:
        inputs *= size
    dense = _filled(by_kind["dense"][0], {"inputs": inputs, "outputs": NUM_CLASSES})
    return None if dense is None else tuple(calls) + (dense,)


def _params(info: ClassInfo) -> tuple[str, ...]:
    return info.init.params[: info.init.required] if info.init else ()


def _filled(info: ClassInfo, values: dict[str, int]) -> LayerCall | None:
    """`info`'s constructor called with each required parameter filled from what its name says; None when one's
    name says nothing cnn-parity knows."""
    args = []
    for name in _params(info):
        for what, words in (
            ("channels", _CHANNELS),
            ("filters", _FILTERS),
            ("inputs", _INPUTS),
            ("outputs", _OUTPUTS),
            ("kernel", _KERNEL),
        ):
            if words.search(name) and what in values:
                args.append(values[what])
                break
        else:
            return None
    return LayerCall(info.name, tuple(args))
