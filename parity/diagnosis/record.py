"""A diagnosis as data: what kind of difference, where, the evidence found, and the sentence for a person.

Code that decides (verdicts, exit codes, table cells, tests) reads `kind` and `evidence`; only renderers show `text`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The fixed vocabulary, in the order the detectors try them (see `parity.diagnosis.diagnose`).
KINDS = (
    "non_finite",  # overflow or NaN
    "tie_policy",  # mismatches only in tied pool windows, routed by another tie rule
    "routing",  # untied pool windows sent their gradient somewhere other than their maximum
    "partial",  # only some windows, rows or positions contribute (the first region only, a skipped border)
    "dropped",  # zero where the reference is not (a missing update, a lost gradient)
    "scale",  # an exact multiple k of the reference (k = -1: a sign error)
    "permuted",  # equal up to an axis permutation or flip (transposed axes, a flipped kernel, a CHW flatten)
    "broadcast",  # every filter or unit received the same value
    "stale_weights",  # the input gradient was computed with the weights after the update
    "downcast",  # float32-level error inside a float64 run
    "drift",  # accumulated rounding in a free-running run: the layer itself is right
    "unexplained",  # none of these
)

# A few words per kind, for table cells.
LABELS = {
    "non_finite": "overflow (non-finite values)",
    "tie_policy": "tie-policy difference",
    "routing": "routing error (not a tie policy)",
    "partial": "partial: only some positions contribute",
    "dropped": "dropped: zero where the reference is not",
    "scale": "an exact multiple of the reference",
    "permuted": "permuted axes or flatten order",
    "broadcast": "the same value for every filter or unit",
    "stale_weights": "input gradient from the updated weights",
    "downcast": "float32-level error in float64",
    "drift": "accumulated numerical drift",
    "unexplained": "implementation mismatch",
}


@dataclass(frozen=True)
class Diagnosis:
    """Why one tensor of one layer differs from the reference."""

    kind: str  # one of KINDS
    layer: str  # the spec layer judged (`conv1`; the last dense for the loss's tensors)
    tensor: str  # the tensor the evidence comes from (`conv1.d_filters`)
    text: str  # one sentence for a person; never parsed
    evidence: dict[str, object] = field(default_factory=dict)  # plain JSON values: the factor, the share, ...

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"diagnosis kind {self.kind!r}: expected one of {', '.join(KINDS)}")

    def text_for(self, tensor: str) -> str:
        """`text` where the failure shown is `tensor`: led by the tensor the diagnosis is of when that is another
        (a layer's first failing tensor fitted no pattern, a later one did)."""
        return self.text if tensor == self.tensor else f"{self.tensor}: {self.text}"

    @property
    def label(self) -> str:
        """A few words for a table cell (see `label`)."""
        return label(self.kind, self.evidence)

    def as_dict(self) -> dict[str, object]:
        """The JSON form: `{kind, layer, tensor, text, evidence}`."""
        return {
            "kind": self.kind,
            "layer": self.layer,
            "tensor": self.tensor,
            "text": self.text,
            "evidence": self.evidence,
        }


def factor_text(factor: float, digits: int = 4) -> str:
    """`factor` to `digits` significant digits, or as many more as it takes not to read 1 (or -1) when it is not:
    0.999999 is no factor of 1."""
    for shown in range(digits, 18):
        text = f"{factor:.{shown}g}"
        if abs(float(text)) != 1 or abs(factor) == 1:
            return text
    return repr(factor)


def label(kind: str, evidence: dict[str, object]) -> str:
    """A few words for a table cell: the kind's label, with the factor of a `scale` and the rule of a tie policy."""
    if kind == "scale":
        reading = f" ({evidence['reading']})" if evidence.get("reading") else ""
        return f"{factor_text(evidence['factor'])} x the reference{reading}"
    if kind == "tie_policy" and "rule" in evidence:
        return f"{LABELS[kind]} ({evidence['rule']})"
    if kind == "non_finite" and "side" in evidence:
        if evidence.get("cause") == "unshifted_exp":
            return "overflow: an unshifted softmax exp"
        if evidence.get("cause") == "probability_underflow":
            return "a probability underflowed to 0 (huge logits)"
        return {"both": "overflow on both sides", "reference": "overflow in the reference"}.get(
            str(evidence["side"]), "overflow in the code under test"
        )
    if kind == "permuted" and "transform" in evidence:
        return f"permuted: {evidence['transform']}"
    return LABELS[kind]


# The tie rules a pool diagnosis names, as its text says them (`parity.diagnosis.diagnose`).
TIE_RULE_TEXT = {
    "first": "only the first maximum in row-major order gets it (PyTorch's rule)",
    "all": "every tied maximum gets the window's whole gradient (the tutorial's rule)",
    "last": "the last maximum in row-major order gets it (a `>=` comparison keeps the last)",
    "other": "one of the maxima gets it, but neither always the first nor always the last",
}
REFERENCE_TIE_RULE_TEXT = {  # what the reference does, by the rule it was asked to route ties by
    "first": "PyTorch gives a tied window's gradient to its first maximum (row-major)",
    "all": "the reference gives every tied maximum the window's whole gradient (the tutorial's rule, --tie-policy all)",
}
