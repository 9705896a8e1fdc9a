"""Finding a user's tutorial-interface classes: a directory of `.py` files, one `.py` file, or a module name.

A directory is scanned with `ast` first and only the files that define a wanted class are imported, so a
training script beside the layers (the tutorial's `cnn.py` trains on import) is never run. Every way this can
fail raises `ImplError` with one line that says what was wrong and what to do.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import itertools
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

LAYERS = ("Conv3x3", "MaxPool2", "Softmax")
METHODS = ("forward", "backprop")
# The tutorial's attribute names: parameters, and the cached logits (`last_totals`) read when present.
ATTRIBUTES = {"Conv3x3": ("filters",), "MaxPool2": (), "Softmax": ("weights", "biases", "last_totals")}
MAPPING_KEYS = LAYERS + tuple(f"{layer}.{name}" for layer in LAYERS for name in METHODS + ATTRIBUTES[layer])
_counter = itertools.count()


class ImplError(ValueError):
    """The implementation cannot be checked (not found, does not import, wrong interface); one clear line."""


@dataclass(frozen=True)
class Mapping:
    """The user's names for the tutorial's classes, methods and attributes (`Softmax.weights` -> `W`)."""

    names: dict[str, str] = field(default_factory=dict)

    def name(self, key: str) -> str:
        """The user's name for `key` (`Conv3x3`, `Softmax.backprop`, ...): mapped, else the tutorial's own."""
        return self.names.get(key, key.rsplit(".", 1)[-1])

    def describe(self) -> str:
        """`Softmax=Dense, Softmax.weights=W`, or `tutorial names` when nothing is mapped."""
        return ", ".join(f"{k}={v}" for k, v in self.names.items()) or "tutorial names"

    @classmethod
    def parse(cls, entries: Iterable[str] | None) -> Mapping:
        """Parse `--map` entries: each `KEY=NAME`, several per entry allowed when separated by commas."""
        names: dict[str, str] = {}
        for entry in entries or ():
            for item in filter(None, (part.strip() for part in entry.split(","))):
                key, sep, value = (part.strip() for part in item.partition("="))
                if not sep or not value:
                    raise ImplError(f"--map {item!r}: expected KEY=NAME, e.g. Softmax.weights=W")
                if key not in MAPPING_KEYS:
                    raise ImplError(f"--map {item!r}: unknown key {key!r}; expected one of {', '.join(MAPPING_KEYS)}")
                if not value.isidentifier():
                    raise ImplError(f"--map {item!r}: {value!r} is not a Python identifier")
                names[key] = value
        return cls(names)


@dataclass(frozen=True)
class TutorialImpl:
    """Three tutorial-interface classes, where they came from, and the names they use."""

    classes: dict[str, type]  # "Conv3x3" / "MaxPool2" / "Softmax" -> the user's class
    label: str  # what the user passed (a path or module name)
    sources: dict[str, str] = field(default_factory=dict)  # layer -> file or module it was found in
    mapping: Mapping = field(default_factory=Mapping)

    def describe(self) -> str:
        """`Conv3x3 (conv.py), MaxPool2 (maxpool.py), Softmax as Dense (layers.py)`."""
        parts = []
        for layer in LAYERS:
            name = self.mapping.name(layer)
            where = self.sources.get(layer, "")
            parts.append(f"{layer}{'' if name == layer else ' as ' + name}{f' ({where})' if where else ''}")
        return ", ".join(parts)


def impl_from_classes(
    conv: type, pool: type, softmax: type, label: str, mapping: Mapping | None = None
) -> TutorialImpl:
    """A `TutorialImpl` from classes already in hand (the self-test's injected bugs)."""
    impl = TutorialImpl({"Conv3x3": conv, "MaxPool2": pool, "Softmax": softmax}, label, mapping=mapping or Mapping())
    _check_methods(impl)
    return impl


def load_impl(spec: str, mapping: Mapping | None = None) -> TutorialImpl:
    """Load the three classes from a directory, a `.py` file, or an importable module name."""
    mapping = mapping or Mapping()
    path = Path(spec)
    if path.is_dir():
        classes, sources = _from_files(sorted(path.glob("*.py")), mapping, spec)
    elif path.is_file():
        if path.suffix != ".py":
            raise ImplError(f"{spec}: not a .py file; pass a directory of .py files, a .py file or a module name")
        classes, sources = _from_files([path], mapping, spec)
    elif _looks_like_module(spec):
        classes, sources = _from_module(spec, mapping)
    else:
        raise ImplError(
            f"{spec}: no such file or directory (expected a directory of .py files, a .py file or a module name)"
        )
    impl = TutorialImpl(classes, spec, sources, mapping)
    _check_methods(impl)
    return impl


def _looks_like_module(spec: str) -> bool:
    return all(part.isidentifier() for part in spec.split("."))


def _from_module(spec: str, mapping: Mapping) -> tuple[dict[str, type], dict[str, str]]:
    try:
        module = importlib.import_module(spec)
    except ModuleNotFoundError as error:
        if error.name and spec.startswith(error.name):
            raise ImplError(f"{spec}: no such file or directory, and no importable module of that name") from None
        raise ImplError(f"importing module {spec} failed: {_one_line(error)}") from None
    except (Exception, SystemExit) as error:  # the user's module is arbitrary code
        raise ImplError(f"importing module {spec} failed: {_one_line(error)}") from None
    classes, missing = {}, []
    for layer in LAYERS:
        found = getattr(module, mapping.name(layer), None)
        if isinstance(found, type):
            classes[layer] = found
        else:
            missing.append(layer)
    if missing:
        defined = sorted(n for n, v in vars(module).items() if isinstance(v, type))
        raise ImplError(_missing_message(spec, missing, mapping, defined))
    return classes, {layer: spec for layer in LAYERS}


def _from_files(files: list[Path], mapping: Mapping, spec: str) -> tuple[dict[str, type], dict[str, str]]:
    """Scan the files' top-level classes with `ast`; import only the files that define wanted classes."""
    wanted = {mapping.name(layer): layer for layer in LAYERS}
    where: dict[str, list[Path]] = {layer: [] for layer in LAYERS}
    defined: list[str] = []
    syntax_errors: list[str] = []
    for file in files:
        try:
            tree = ast.parse(file.read_bytes(), filename=str(file))
        except SyntaxError as error:
            syntax_errors.append(f"{file}:{error.lineno}: syntax error: {error.msg}")
            continue
        except (OSError, ValueError) as error:
            syntax_errors.append(f"{file}: cannot read: {_one_line(error)}")
            continue
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                defined.append(f"{node.name} ({file.name})")
                if node.name in wanted:
                    where[wanted[node.name]].append(file)
    missing = [layer for layer in LAYERS if not where[layer]]
    if missing:
        if syntax_errors:  # the class is most likely in the file that does not parse
            raise ImplError(syntax_errors[0])
        if not files:
            raise ImplError(f"{spec}: no .py files here")
        raise ImplError(_missing_message(spec, missing, mapping, defined))
    for layer, found in where.items():
        if len(found) > 1:
            raise ImplError(
                f"{spec}: class {mapping.name(layer)} is defined in {len(found)} files "
                f"({', '.join(f.name for f in found)}); pass the one file to check"
            )
    modules = {file: _import_file(file) for file in dict.fromkeys(where[layer][0] for layer in LAYERS)}
    classes, sources = {}, {}
    for layer in LAYERS:
        file = where[layer][0]
        found = getattr(modules[file], mapping.name(layer), None)
        if not isinstance(found, type):
            raise ImplError(f"{file}: {mapping.name(layer)} is not a class after importing the file")
        classes[layer], sources[layer] = found, str(file)
    return classes, sources


def _import_file(file: Path):
    """Import one file under a private module name, its directory first on sys.path for sibling imports."""
    directory = str(file.parent.resolve())
    name = f"_cnn_parity_impl_{next(_counter)}_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    sys.modules[name] = module
    sys.path.insert(0, directory)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:  # the user's file is arbitrary code
        sys.modules.pop(name, None)
        if isinstance(error, SyntaxError):
            raise ImplError(f"{error.filename}:{error.lineno}: syntax error: {error.msg}") from None
        raise ImplError(f"importing {file} failed: {_one_line(error)}") from None
    finally:
        sys.path.remove(directory)
        # Sibling modules imported from that directory (`from conv import ...`) must not leak into the next check.
        for other in set(sys.modules) - before - {name}:
            origin = getattr(sys.modules[other], "__file__", None)
            if origin and Path(origin).resolve().is_relative_to(directory):
                del sys.modules[other]
    return module


def _missing_message(spec: str, missing: list[str], mapping: Mapping, defined: list[str]) -> str:
    names = ", ".join(mapping.name(layer) for layer in missing)
    hint = "; if yours is named differently, pass --map " + " --map ".join(f"{layer}=NAME" for layer in missing)
    found = f" (classes found: {', '.join(defined)})" if defined else " (no classes found)"
    return f"{spec}: no class {names}{found}{hint}"


def _check_methods(impl: TutorialImpl) -> None:
    for layer in LAYERS:
        cls = impl.classes[layer]
        for method in METHODS:
            name = impl.mapping.name(f"{layer}.{method}")
            if not callable(getattr(cls, name, None)):
                public = sorted(n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n, None)))
                raise ImplError(
                    f"{impl.label}: {cls.__name__} has no method {name} (methods: {', '.join(public) or 'none'}); "
                    f"pass --map {layer}.{method}=NAME if yours is named differently"
                )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
