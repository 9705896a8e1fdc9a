"""Finding a user's layer classes: a directory of `.py` files, one `.py` file, or a module name.

Two ways to say which classes make the network:
- the tutorial's trio (the default): `Conv3x3`, `MaxPool2`, `Softmax`, under the user's names when `--map` gives
  them, or the only class that looks like each (`conv3x3`, `MaxPool2x2`: the one conv-like, the one pool-like);
- `--layers "ConvA(8),MaxPool(),ConvB(16,8),MaxPool(),Softmax(256,10)"`: the classes to construct, in order.

A directory is scanned with `ast` first (`parity.check.catalogue`) and only the files that define a wanted class
are imported, so a training script beside the layers (the tutorial's `cnn.py` trains on import) is never run.
Every way this can fail raises `ImplError` with what was wrong and what to do; names that do not match raise
`NamesError`, which carries each mismatch as data (`Missing`) for `parity.check.suggest` to propose the options
(all three in `parity.check.names`, with the user's names, `Mapping`).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import itertools
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from parity.check.catalogue import Catalogue, ClassInfo, scan_files, scan_module
from parity.check.layercalls import LayerCall, format_layers
from parity.check.names import LAYERS, Choice, ImplError, Mapping, Missing, NamesError
from parity.check.usercode import DEFAULT_TIMEOUT, MethodTimeout, ProcessExit, one_line, syntax_error_text, user_call

# The least time an import of the user's file gets, whatever --timeout says of methods: the limit is there for code
# that never ends (a training loop at the top level), and a first import of a large library can take seconds; one
# interrupted halfway cannot be imported again in this process.
IMPORT_TIMEOUT_FLOOR = 60.0

ROLE_KIND = {"Conv3x3": "conv", "MaxPool2": "pool", "Softmax": "dense"}
# How a class that plays each tutorial role is recognised by its name when it is not called as in the tutorial.
KIND_WORDS = {
    "conv": re.compile(r"conv", re.IGNORECASE),
    "pool": re.compile(r"pool", re.IGNORECASE),
    "dense": re.compile(r"softmax|dense|fc|linear|full|affine|classif", re.IGNORECASE),
}
_counter = itertools.count()


@dataclass(frozen=True)
class Impl:
    """The classes of one implementation, where they came from, the names they use and the layers to build.

    `classes` is keyed by role: the tutorial's class name (`Conv3x3`) when `calls` is None (the tutorial's trio),
    else the user's class name as `--layers` gives it."""

    classes: dict[str, type]
    label: str  # what the user passed (a path or module name)
    sources: dict[str, str] = field(default_factory=dict)  # role -> file or module it was found in
    mapping: Mapping = field(default_factory=Mapping)
    calls: tuple[LayerCall, ...] | None = None  # --layers; None: the tutorial's trio
    catalogue: Catalogue | None = None
    found: tuple[Choice, ...] = ()  # classes taken because they were the only ones that fit

    @property
    def roles(self) -> tuple[str, ...]:
        """The classes checked, by role key."""
        return LAYERS if self.calls is None else tuple(dict.fromkeys(call.cls for call in self.calls))

    def class_name(self, role: str) -> str:
        """The user's own name of the class playing `role`."""
        return self.classes[role].__name__

    def describe(self) -> str:
        """`Conv3x3 (conv.py), MaxPool2 (maxpool.py), Softmax as Dense (layers.py)`."""
        parts = []
        for role in self.roles:
            name = self.class_name(role) if role in self.classes else self.mapping.name(role)
            where = self.sources.get(role, "")
            parts.append(f"{role}{'' if name == role else ' as ' + name}{f' ({where})' if where else ''}")
        return ", ".join(parts)

    def options(self) -> list[str]:
        """The command-line options that select these layers and names (`--layers ...`, `--map ...`)."""
        layers = [f'--layers "{format_layers(self.calls)}"'] if self.calls is not None else []
        return layers + self.mapping.options()


TutorialImpl = Impl  # the name this type had when only the tutorial's trio could be checked


def impl_from_classes(conv: type, pool: type, softmax: type, label: str, mapping: Mapping | None = None) -> Impl:
    """An `Impl` of the tutorial's trio from classes already in hand (the self-test's injected bugs)."""
    return Impl({"Conv3x3": conv, "MaxPool2": pool, "Softmax": softmax}, label, mapping=mapping or Mapping())


def load_impl(
    spec: str,
    mapping: Mapping | None = None,
    calls: tuple[LayerCall, ...] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Impl:
    """Load the classes to check from a directory, a `.py` file, or an importable module name: the tutorial's trio,
    or the classes `calls` (from `--layers`) construct. NamesError when names do not match; ImplError when an import
    fails or runs past `timeout` seconds."""
    mapping = mapping or Mapping()
    if not str(spec).strip():  # Path("") would be the working directory
        raise ImplError("impl: empty; pass a directory of .py files, a .py file or a module name")
    path = Path(spec)
    if path.is_dir():
        files = sorted(path.glob("*.py"))
        if not files:
            raise ImplError(f"{spec}: no .py files here")
        return _from_files(files, mapping, spec, calls, timeout)
    if path.is_file():
        if path.suffix != ".py":
            raise ImplError(f"{spec}: not a .py file; pass a directory of .py files, a .py file or a module name")
        return _from_files([path], mapping, spec, calls, timeout)
    if path.exists():  # a device, a FIFO, a socket: nothing to read classes from
        raise ImplError(f"{spec}: not a regular file or a directory; pass a directory of .py files or a .py file")
    if _looks_like_module(spec):
        return _from_module(spec, mapping, calls, timeout)
    raise ImplError(
        f"{spec}: no such file or directory (expected a directory of .py files, a .py file or a module name)"
    )


def _looks_like_module(spec: str) -> bool:
    return all(part.isidentifier() for part in spec.split("."))


def _from_module(spec: str, mapping: Mapping, calls: tuple[LayerCall, ...] | None, timeout: float | None) -> Impl:
    try:
        module = user_call(importlib.import_module, spec, timeout=_import_timeout(timeout))
    except ModuleNotFoundError as error:
        if error.name and spec.startswith(error.name):
            raise ImplError(f"{spec}: no such file or directory, and no importable module of that name") from None
        raise ImplError(f"importing module {spec} failed: {one_line(error)}") from None
    except (Exception, SystemExit, MethodTimeout, ProcessExit) as error:  # the user's module is arbitrary code
        raise ImplError(_import_failure(f"module {spec}", error)) from None
    locations = list(getattr(module, "__path__", None) or [])
    if getattr(module, "__file__", None) is None and len(locations) == 1:
        # A namespace package, a folder of .py files with no __init__.py (as the shipped examples are): it holds no
        # classes itself, so it is read as that folder.
        return load_impl(locations[0], mapping, calls, timeout)
    catalogue = scan_module(module, spec)
    chosen, found = choose_classes(catalogue, mapping, calls, spec)
    classes = {role: getattr(module, name) for role, name in chosen.items()}
    return Impl(classes, spec, {role: spec for role in chosen}, mapping, calls, catalogue, found)


def _from_files(
    files: list[Path], mapping: Mapping, spec: str, calls: tuple[LayerCall, ...] | None, timeout: float | None
) -> Impl:
    """Scan the files with `ast`; import only the files that define the chosen classes."""
    catalogue = scan_files(files)
    try:
        chosen, found = choose_classes(catalogue, mapping, calls, spec)
    except NamesError:
        if catalogue.syntax_errors:  # the class is most likely in the file that does not parse
            raise ImplError(catalogue.syntax_errors[0]) from None
        if not catalogue.layers() and files[0].parent == Path(spec):
            _point_to_subfolders(Path(spec))
        raise
    by_name = {file.name: file for file in files}
    for name in chosen.values():
        defined_in = catalogue.duplicates.get(name, [])
        if len(defined_in) > 1:
            raise ImplError(
                f"{spec}: class {name} is defined in {len(defined_in)} files ({', '.join(defined_in)}); "
                "pass the one file to check"
            )
    modules = {}
    classes, sources = {}, {}
    for role, name in chosen.items():
        file = by_name[catalogue.classes[name].where]
        if file not in modules:
            modules[file] = _import_file(file, timeout)
        found_class = getattr(modules[file], name, None)
        if not isinstance(found_class, type):
            raise ImplError(f"{file}: {name} is not a class after importing the file")
        classes[role], sources[role] = found_class, str(file)
    return Impl(classes, spec, sources, mapping, calls, catalogue, found)


def choose_classes(
    catalogue: Catalogue, mapping: Mapping, calls: tuple[LayerCall, ...] | None, label: str
) -> tuple[dict[str, str], tuple[Choice, ...]]:
    """The class name for each role, and how any was chosen; NamesError listing every role without a class."""
    roles = LAYERS if calls is None else tuple(dict.fromkeys(call.cls for call in calls))
    mapping.check_roles(roles, label)
    chosen, found, problems = {}, [], []
    layer_classes = catalogue.layers()
    exact = {mapping.name(role) for role in roles if mapping.name(role) in catalogue.classes}
    for role in roles:
        name = mapping.name(role) if calls is None else role
        if name in catalogue.classes:
            chosen[role] = name
            continue
        candidates = [info.name for info in layer_classes if info.name not in exact]
        if calls is None and mapping.mapped(role) is None:
            kind = ROLE_KIND[role]
            alike = [n for n in candidates if KIND_WORDS[kind].search(n) and not _model_like(n)]
            if len(alike) == 1:
                chosen[role] = alike[0]
                found.append(Choice(role, "", alike[0], f"the only {kind}-like class"))
                continue
            candidates = alike + [n for n in candidates if n not in alike]
            detail = f"{len(alike)} {kind}-like classes: {', '.join(alike)}" if alike else ""
        else:
            candidates = closest(name, candidates)
            detail = ""
        problems.append(Missing("class", role, "", name, tuple(candidates), detail or _classes_here(catalogue)))
    if problems:
        raise NamesError(label, problems, catalogue)
    return chosen, tuple(found)


def _point_to_subfolders(folder: Path) -> None:
    """ImplError naming the subfolders that hold layer classes, when the folder given holds none itself."""
    holding = [
        sub
        for sub in sorted(p for p in folder.iterdir() if p.is_dir())
        if scan_files(sorted(sub.glob("*.py"))).layers()
    ]
    if holding:
        where = ", ".join(f"{sub.name}/" for sub in holding)
        raise ImplError(
            f"{folder}: no layer classes in its .py files, but {where} {'holds' if len(holding) == 1 else 'hold'} some "
            f"(subfolders are not searched); pass --impl {holding[0]}"
        )


def _model_like(name: str) -> bool:
    """`ConvNet`, `CNNModel`: a whole network, not a layer, even when its name says conv."""
    return bool(re.search(r"net|model|cnn", name, re.IGNORECASE))


def _classes_here(catalogue: Catalogue) -> str:
    found = [f"{info.name} ({info.where})" for info in catalogue.classes.values()]
    return f"classes found: {', '.join(found)}" if found else "no classes found"


def closest(name: str, names: Iterable[str]) -> list[str]:
    """`names` ordered by likeness to `name` (case ignored), the likest first."""
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda n: -difflib.SequenceMatcher(None, name.lower(), n.lower()).ratio())


# This tool's own top-level packages: imported before the user's code, they shadow a user's module of the same name.
TOOL_PACKAGES = ("scratch", "reference", "parity", "reports")


def _refuse_shadowed_imports(directory: Path) -> None:
    """ImplError when the user's directory holds a module named like one of TOOL_PACKAGES that its code imports:
    `import scratch` would give this tool's package (already imported), not the user's file."""
    for name in TOOL_PACKAGES:
        own = next((p for p in (directory / f"{name}.py", directory / name / "__init__.py") if p.is_file()), None)
        if own is None:
            continue
        importers = [file.name for file in sorted(directory.glob("*.py")) if name in _imported_names(file)]
        if importers:
            raise ImplError(
                f"{own}: {', '.join(importers)} import{'s' if len(importers) == 1 else ''} it as `{name}`, but "
                f"`{name}` is also a package of this tool, which Python loads for check: your code would get the "
                f"tool's. Rename your module (and its imports) to check this code"
            )


def _imported_names(file: Path) -> set[str]:
    """The top-level module names a file imports absolutely (none for a file that does not parse)."""
    try:
        tree = ast.parse(file.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _import_file(file: Path, timeout: float | None):
    """Import one file under a private module name, its directory first on sys.path for sibling imports; its
    top-level code runs as a call into the user's code does (`user_call`: a time limit, its prints dropped)."""
    _refuse_shadowed_imports(file.parent)
    directory = str(file.parent.resolve())
    name = f"_cnn_parity_impl_{next(_counter)}_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    sys.modules[name] = module
    sys.path.insert(0, directory)
    try:
        user_call(spec.loader.exec_module, module, timeout=_import_timeout(timeout))
    except (Exception, SystemExit, MethodTimeout, ProcessExit) as error:  # the user's file is arbitrary code
        sys.modules.pop(name, None)
        if isinstance(error, SyntaxError):
            raise ImplError(syntax_error_text(error.filename or file, error)) from None
        raise ImplError(_import_failure(str(file), error)) from None
    finally:
        sys.path.remove(directory)
        # Sibling modules imported from that directory (`from conv import ...`) must not leak into the next check.
        for other in set(sys.modules) - before - {name}:
            origin = getattr(sys.modules[other], "__file__", None)
            if origin and Path(origin).resolve().is_relative_to(directory):
                del sys.modules[other]
    return module


def _import_timeout(timeout: float | None) -> float | None:
    """The time limit of an import: `timeout` (None: none), but at least IMPORT_TIMEOUT_FLOOR."""
    return None if timeout is None else max(timeout, IMPORT_TIMEOUT_FLOOR)


def _import_failure(what: str, error: BaseException) -> str:
    """Why importing the user's file or module failed, in one line."""
    if isinstance(error, MethodTimeout):
        return (
            f"importing {what} did not finish within {error.seconds:g} s (its top-level code runs on import, and "
            'so does that of what it imports: a training loop belongs under `if __name__ == "__main__":`); pass '
            "--timeout SECONDS to allow longer"
        )
    if isinstance(error, ProcessExit):
        return f"importing {what} failed: it {error}"
    if isinstance(error, SystemExit):
        return f"importing {what} failed: it called sys.exit({error.code!r})"
    return f"importing {what} failed: {one_line(error)}"


def describe_class(info: ClassInfo) -> str:
    """`MaxPool2x2() in MaxPool2x2.py: getRegions(image) [generator], feedForward(image), backprop(gradient)`."""
    methods = ", ".join(m.signature() + (" [generator]" if m.generator else "") for m in info.methods.values())
    return f"{info.constructor()} in {info.where}: {methods or 'no public methods'}"
