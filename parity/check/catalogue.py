"""What an implementation holds, read without running it: its classes (constructor, methods, the attributes its
`__init__` sets) and the layer objects its training script constructs, in order.

Files are read with `ast`, so a training script that trains on import is never run; a module given by name is
imported and inspected instead. Both give the same `ClassInfo`, which the name matching, the messages and the
suggested options are built from.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

from parity.check.layercalls import LayerCall, literal
from parity.check.usercode import syntax_error_text

# Words a forward or a backward method's name is recognised by, and the names a learning rate goes by.
FORWARD_WORDS = re.compile(r"forward|feed|fwd|predict|propagate", re.IGNORECASE)
BACKWARD_WORDS = re.compile(r"back|grad|bwd", re.IGNORECASE)
LR_NAMES = frozenset({"lr", "learn_rate", "learning_rate", "learnrate", "learningrate", "alpha", "eta", "step_size"})


@dataclass(frozen=True)
class MethodInfo:
    """One method: its positional parameters after `self`, how many are required, and whether it yields."""

    name: str
    params: tuple[str, ...]
    required: int
    varargs: bool = False
    generator: bool = False

    def takes(self, count: int) -> bool:
        """Whether it can be called with `count` positional arguments."""
        return self.required <= count and (count <= len(self.params) or self.varargs)

    @property
    def takes_lr(self) -> bool:
        """Its second parameter is named as a learning rate is (`lr`, `learn_rate`, ...)."""
        return len(self.params) >= 2 and self.params[1].lower() in LR_NAMES

    def signature(self) -> str:
        """`backprop(d_L_d_out, learn_rate)`; a parameter with a default shows as `rng=...`."""
        shown = [p if i < self.required else f"{p}=..." for i, p in enumerate(self.params)]
        return f"{self.name}({', '.join(shown + (['*args'] if self.varargs else []))})"


@dataclass(frozen=True)
class ClassInfo:
    """One class of the implementation, as a person reading it would describe it."""

    name: str
    where: str  # the file (or module) that defines it
    init: MethodInfo | None
    methods: dict[str, MethodInfo] = field(default_factory=dict)  # public methods, inherited ones included
    attributes: tuple[str, ...] = ()  # what `__init__` assigns to `self`

    @property
    def forward_like(self) -> list[MethodInfo]:
        """Methods named like a forward pass that take one input (generators, such as `iterate_regions`, aside)."""
        return [
            m
            for m in self.methods.values()
            if FORWARD_WORDS.search(m.name) and not BACKWARD_WORDS.search(m.name) and m.takes(1) and not m.generator
        ]

    @property
    def is_layer(self) -> bool:
        """A layer has a forward taking one input; a whole model's forward takes (image, label)."""
        return bool(self.forward_like) or ("forward" in self.methods and self.methods["forward"].takes(1))

    def constructor(self) -> str:
        """`Softmax(input_len, nodes)`."""
        return self.init.signature().replace("__init__", self.name, 1) if self.init else f"{self.name}()"


class Unknown:
    """An argument a script passes that is not a literal (`nominal_filters_test`): its source text."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unknown) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


@dataclass(frozen=True)
class ScriptSequence:
    """The layer objects one function (or module) of a script constructs, in source order: `Model.__init__` in
    cnn.py constructs ConvA(8), MaxPool(), ... An argument that is not a literal is an `Unknown`."""

    where: str  # `cnn.py, Model.__init__`
    calls: tuple[LayerCall, ...]
    unknown: tuple[int, ...] = ()  # positions of calls with an argument that is not a literal
    source: tuple[str, ...] = ()  # each call as written: `Convolution(8, nominal_filters_test)`


@dataclass
class Catalogue:
    """Every class found and the layer sequences scripts construct; syntax errors of files that would not parse."""

    classes: dict[str, ClassInfo] = field(default_factory=dict)
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # class name -> every file defining it
    sequences: list[ScriptSequence] = field(default_factory=list)
    syntax_errors: list[str] = field(default_factory=list)

    def layers(self) -> list[ClassInfo]:
        """The classes that look like layers (a forward taking one input), in the order found."""
        return [info for info in self.classes.values() if info.is_layer]

    def best_sequence(self) -> ScriptSequence | None:
        """The longest sequence of layer constructions a script makes (the first of equals), of two or more."""
        usable = [s for s in self.sequences if len(s.calls) >= 2]
        return max(usable, key=lambda s: len(s.calls), default=None)


def scan_files(files: list[Path]) -> Catalogue:
    """Read every file's classes and construction sequences with `ast` (nothing is imported)."""
    catalogue = Catalogue()
    trees = []
    for file in files:
        try:
            tree = ast.parse(file.read_bytes(), filename=str(file))
        except SyntaxError as error:
            catalogue.syntax_errors.append(syntax_error_text(file, error))
            continue
        except (OSError, ValueError) as error:
            catalogue.syntax_errors.append(f"{file}: cannot read: {' '.join(str(error).split())}")
            continue
        trees.append((file, tree))
    nodes: dict[str, ast.ClassDef] = {}
    for file, tree in trees:
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                catalogue.duplicates.setdefault(node.name, []).append(file.name)
                if node.name not in nodes:
                    nodes[node.name] = node
                    catalogue.classes[node.name] = _class_from_ast(node, file.name)
    for name, info in list(catalogue.classes.items()):  # inherited methods, from bases defined here
        catalogue.classes[name] = _with_bases(info, nodes[name], catalogue.classes)
    layer_names = {info.name for info in catalogue.layers()}
    for file, tree in trees:
        catalogue.sequences += _sequences(tree, file.name, layer_names)
    return catalogue


def scan_module(module: object, label: str) -> Catalogue:
    """The classes a module defines or imports, by inspecting them (the module is already imported)."""
    catalogue = Catalogue()
    for name, value in vars(module).items():
        if isinstance(value, type) and not name.startswith("_"):
            catalogue.classes[name] = class_from_runtime(value, label)
            catalogue.duplicates[name] = [label]
    return catalogue


def class_from_runtime(cls: type, where: str) -> ClassInfo:
    """A `ClassInfo` from a class object (inherited methods included)."""
    methods = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        value = inspect.getattr_static(cls, name, None)
        function = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        if inspect.isfunction(function):
            methods[name] = _method_from_runtime(name, function, bound=not isinstance(value, staticmethod))
    init = cls.__dict__.get("__init__") or next(
        (base.__dict__["__init__"] for base in cls.__mro__[1:] if "__init__" in base.__dict__), None
    )
    init_info = _method_from_runtime("__init__", init, bound=True) if inspect.isfunction(init) else None
    return ClassInfo(cls.__name__, where, init_info, methods)


def method_info(cls: type, name: str) -> MethodInfo | None:
    """The `MethodInfo` of `cls.name`, or None when it has no such method."""
    return class_from_runtime(cls, "").methods.get(name)


def _method_from_runtime(name: str, function, bound: bool) -> MethodInfo:
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return MethodInfo(name, (), 0, varargs=True)
    if (
        bound
        and parameters
        and parameters[0].kind in (parameters[0].POSITIONAL_ONLY, parameters[0].POSITIONAL_OR_KEYWORD)
    ):
        parameters = parameters[1:]
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(p.default is p.empty for p in positional)
    varargs = any(p.kind == p.VAR_POSITIONAL for p in parameters)
    return MethodInfo(name, tuple(p.name for p in positional), required, varargs, inspect.isgeneratorfunction(function))


def _class_from_ast(node: ast.ClassDef, where: str) -> ClassInfo:
    methods, init, attributes = {}, None, []
    for item in node.body:
        if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        decorators = {d.id for d in item.decorator_list if isinstance(d, ast.Name)}
        info = _method_from_ast(item, bound="staticmethod" not in decorators)
        if item.name == "__init__":
            init = info
            attributes = _self_assignments(item)
        elif not item.name.startswith("_"):
            methods[item.name] = info
    return ClassInfo(node.name, where, init, methods, tuple(dict.fromkeys(attributes)))


def _with_bases(info: ClassInfo, node: ast.ClassDef, classes: dict[str, ClassInfo]) -> ClassInfo:
    methods, init = {}, info.init
    for base in reversed(node.bases):
        if isinstance(base, ast.Name) and base.id in classes and base.id != info.name:
            methods.update(classes[base.id].methods)
            init = init or classes[base.id].init
    methods.update(info.methods)
    return ClassInfo(info.name, info.where, init, methods, info.attributes)


def _method_from_ast(node: ast.FunctionDef, bound: bool) -> MethodInfo:
    arguments = node.args
    positional = [a.arg for a in arguments.posonlyargs + arguments.args]
    defaults = len(arguments.defaults)
    if bound and positional:
        positional = positional[1:]
    required = max(len(positional) - defaults, 0)
    return MethodInfo(node.name, tuple(positional), required, arguments.vararg is not None, _yields(node))


def _yields(function: ast.FunctionDef) -> bool:
    """A `yield` in the function's own body (not in a function nested in it)."""
    stack = list(function.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))
    return False


def _self_assignments(function: ast.FunctionDef) -> list[str]:
    names = []
    for node in ast.walk(function):
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        for target in targets:
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                names.append(target.attr)
    return names


def _sequences(tree: ast.Module, where: str, layer_names: set[str]) -> list[ScriptSequence]:
    """Per scope (the module body, each function), the layer constructions in source order."""
    constants = _module_constants(tree)
    scopes: list[tuple[str, list[ast.stmt]]] = [("module level", tree.body)]
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    scopes.append((f"{node.name}.{item.name}", item.body))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node in tree.body:
            scopes.append((node.name, node.body))
    found = []
    for scope, body in scopes:
        calls, unknown, source = [], [], []
        for node in _walk_scope(body):
            name = _called_class(node, layer_names)
            if name is None:
                continue
            args = tuple(_argument(arg, constants) for arg in node.args)
            kwargs = tuple((k.arg, _argument(k.value, constants)) for k in node.keywords if k.arg)
            if any(isinstance(value, Unknown) for value in args + tuple(v for _, v in kwargs)):
                unknown.append(len(calls))
            calls.append(LayerCall(name, args, kwargs))
            source.append(ast.unparse(node))
        if calls:
            found.append(ScriptSequence(f"{where}, {scope}", tuple(calls), tuple(unknown), tuple(source)))
    return found


def _argument(node: ast.expr, constants: dict[str, ast.expr]) -> object:
    """A literal argument's value, or an `Unknown` holding its source."""
    try:
        return literal(_resolved(node, constants))
    except ValueError:
        return Unknown(ast.unparse(node))


def _walk_scope(body: list[ast.stmt]):
    """Every node of a scope in source order, not descending into nested functions or classes."""
    for statement in body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        nodes = [n for n in ast.walk(statement) if isinstance(n, ast.Call)]
        yield from sorted(nodes, key=lambda n: (n.lineno, n.col_offset))


def _called_class(node: ast.Call, layer_names: set[str]) -> str | None:
    """`ConvA(8)` or `module.ConvA(8)` calls a class of the implementation."""
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    return name if name in layer_names else None


def _module_constants(tree: ast.Module) -> dict[str, ast.expr]:
    """Module-level `NAME = <literal>` assignments, which a construction may use as an argument."""
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                literal(node.value)
            except ValueError:
                continue
            constants[node.targets[0].id] = node.value
    return constants


def _resolved(node: ast.expr, constants: dict[str, ast.expr]) -> ast.expr:
    """`node` with module-level constants substituted (one level: `NUM_FILTERS` -> 8, `4 * 4 * N` -> 4 * 4 * 8)."""

    class Substitute(ast.NodeTransformer):
        def visit_Name(self, name: ast.Name) -> ast.expr:
            return constants.get(name.id, name)

    return Substitute().visit(ast.parse(ast.unparse(node), mode="eval").body)
