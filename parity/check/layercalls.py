"""`--layers "ConvA(8),MaxPool(),ConvB(16,8),MaxPool(),Softmax(4*4*16,10)"`: the layer objects to construct, in order.

Each item is a class of the implementation called with literal arguments: integers, floats, strings, booleans,
None, tuples of those, and integer arithmetic (`4*4*16`), positional or by keyword. The text is parsed with `ast`
and never evaluated, so nothing but these literals can get in.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass, field

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}
EXAMPLE = "ConvA(8),MaxPool(),ConvB(16,8),MaxPool(),Softmax(4*4*16,10)"


class LayersError(ValueError):
    """A `--layers` text that is not a comma-separated list of `Class(literal, ...)` calls; one line."""


@dataclass(frozen=True)
class LayerCall:
    """One layer object to construct: the class's name and its arguments."""

    cls: str
    args: tuple = ()
    kwargs: tuple[tuple[str, object], ...] = field(default=())

    def text(self, separator: str = ", ") -> str:
        """`ConvB(16, 8)`, as it would be written in `--layers`."""
        parts = [_shown(value) for value in self.args] + [f"{key}={_shown(value)}" for key, value in self.kwargs]
        return f"{self.cls}({separator.join(parts)})"

    def with_arg(self, position: int | str, value: object) -> LayerCall:
        """The same call with one argument (by position or keyword) replaced."""
        if isinstance(position, int):
            args = list(self.args)
            args[position] = value
            return LayerCall(self.cls, tuple(args), self.kwargs)
        return LayerCall(self.cls, self.args, tuple((k, value if k == position else v) for k, v in self.kwargs))


def _shown(value: object) -> str:
    """A literal as `--layers` writes it: strings in double quotes, so the option pastes inside single quotes."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "(" + ", ".join(map(_shown, value)) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def _syntax_error(text: str, wrapped: SyntaxError) -> tuple[str, int]:
    """What is wrong with `text` and where (its 1-based column), as the user wrote it: the list brackets the parse adds
    must not appear in the message (an unclosed `(` would read as "']' does not match '('")."""
    try:
        ast.parse(text, mode="eval")
    except SyntaxError as bare:
        return bare.msg, max(bare.offset or 1, 1)
    return wrapped.msg, max((wrapped.offset or 1) - 1, 1)


def parse_layers(text: str) -> tuple[LayerCall, ...]:
    """Parse a `--layers` text; LayersError naming the bad item and what an item looks like."""
    if not text.strip():
        raise LayersError(f"--layers is empty; expected comma-separated calls such as {EXAMPLE!r}")
    try:
        tree = ast.parse(f"[{text}]", mode="eval")
    except SyntaxError as error:
        message, column = _syntax_error(text, error)
        raise LayersError(
            f"--layers {text!r}: not a list of calls ({message} at column {column}); expected e.g. {EXAMPLE!r}"
        ) from None
    calls = []
    for position, node in enumerate(tree.body.elts, start=1):
        item = ast.get_source_segment(f"[{text}]", node) or "?"
        where = f"--layers item {position} {item!r}"
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            raise LayersError(f"{where}: expected a class called with its arguments, e.g. MaxPool2() or Conv3x3(8)")
        try:
            args = tuple(literal(arg) for arg in node.args)
            kwargs = tuple((keyword.arg, literal(keyword.value)) for keyword in node.keywords)
        except ValueError as error:
            raise LayersError(f"{where}: {error}") from None
        if any(key is None for key, _ in kwargs):
            raise LayersError(f"{where}: **kwargs cannot be given here; name each argument")
        calls.append(LayerCall(node.func.id, args, kwargs))
    return tuple(calls)


def format_layers(calls: tuple[LayerCall, ...] | list[LayerCall]) -> str:
    """The `--layers` text of `calls`: `ConvA(8),MaxPool(),...` (no spaces, so it pastes without quoting trouble)."""
    return ",".join(call.text(",") for call in calls)


def literal(node: ast.expr) -> object:
    """The value of a literal argument node; ValueError naming what is not one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(literal(element) for element in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = literal(node.left), literal(node.right)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (left, right)):
            if isinstance(node.op, ast.FloorDiv) and right == 0:
                raise ValueError("division by zero")
            return _OPERATORS[type(node.op)](left, right)
    raise ValueError(
        f"{ast.unparse(node)!r} is not a literal; arguments are numbers, strings, booleans, None, tuples, or integer "
        "arithmetic such as 4*4*16"
    )
