"""`ImplSide`: drive a user's layer objects exactly as the tutorial's `train()` drives its three, for the lockstep.

Each user layer object is one spec layer (`parity.check.infer.Architecture`). One step, as in the tutorial::

    out = image / 255 - 0.5
    for layer in layers: out = layer.forward(out)           # the last returns the probabilities
    loss = -np.log(out[label]); gradient = np.zeros(10); gradient[label] = -1 / out[label]
    for layer in reversed(layers): gradient = layer.backprop(gradient, lr)   # (gradient) alone for a pool, a ReLU

The user's code is per sample (HWC activations); this adapter is the one place that adds the batch axis of 1 the
engine's scratch layouts have, and that converts the user's weight layouts (`ParamBinding`) to scratch's. What the
engine gets, under the spec's names:
- seen directly: every layer's `out` (forward return values; the last layer's is `probs`), every `d_in` (backprop
  return values; the first layer's may be None, as the tutorial's conv returns, and is then not compared), the
  logits `{last}.out` when the last layer caches them;
- computed as `train()` does: `loss` = -log(probs[label]);
- recovered from the in-place SGD update: every parameter gradient = (before - after) / lr, and `{last}.d_out` =
  the recovered bias gradient of the last layer (dL/dbiases = dL/dlogits).

Recovery precision: `after = fl(before - fl(lr * g))`, so `(before - after) / lr` is off by at most half an ulp of
`after` divided by lr, plus ~2 eps relative: |error| <= eps/2 * |w| / lr + 2 eps |g|. For float64 at lr 0.005 that
is ~2.2e-14 * |w|: ~1e-14 for filters (|w| < ~0.5), ~1e-16 for dense weights and biases, 100x inside the float64
tolerance (atol 1e-12 + rtol 1e-10 * |reference|). It grows with |w| / lr: the large-logit probe therefore raises
the logits through weights of ~4 (error ~1e-13), not through biases of ~800 (error ~2e-11, over the atol), and
runs at a larger lr where a small network needs larger weights for the same shift (`parity.check.run`).

Because the update happens inside `backprop`, `update(lr)` is a no-op that only checks the lr is the one used.

Faithful to the user's own training: each layer is handed what its neighbour returned, as it is (not reshaped or
converted; a failure on it names that neighbour), and what is recorded is a private copy, so code that works in
place on what it is given changes nothing already recorded. The shared weights are written into the user's own
arrays (their dtype kept). A layer run alone (`run_layer`) gets copies of the reference's tensors and runs from the
state it began the step in, which is put back after, so the whole-network run sees one call of it per step
(`parity.check.layerstate`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from parity.check.binding import BoundLayer
from parity.check.infer import Architecture, construct
from parity.check.layerstate import LayerState
from parity.check.layouts import ParamBinding
from parity.check.names import ImplError
from parity.check.usercode import ImplCrash, guarded, returned_array
from parity.lockstep.feed import LayerFeed
from scratch.spec import LayerSpec, NetworkSpec, parse_spec


def tutorial_spec(image_shape: tuple[int, int] = (28, 28), num_filters: int = 8, num_classes: int = 10) -> NetworkSpec:
    """The spec the tutorial's three classes implement: `conv3x{num_filters},pool2,dense{num_classes}`."""
    return parse_spec(f"conv3x{num_filters},pool2,dense{num_classes}", tuple(image_shape), num_classes)


class ImplSide:
    """A lockstep `Side` around fresh objects of an `Architecture`'s layers, holding `initial`'s weights (by spec
    parameter name, scratch layouts)."""

    def __init__(self, arch: Architecture, initial: dict[str, np.ndarray], lr: float) -> None:
        self.arch, self.spec, self.lr = arch, arch.spec, float(lr)
        self.bound = arch.layers
        state = np.random.get_state()  # the tutorial's constructors draw from the global RNG: leave it as it was
        try:
            self.objects = [
                construct(arch.impl, layer.call, spec.name, timeout=arch.timeout) for layer, spec in self._pairs()
            ]
        finally:
            np.random.set_state(state)
        for layer, obj in zip(self.bound, self.objects, strict=True):
            for binding in layer.params:
                _check_attribute(arch, layer, obj, binding)
        self.load_parameters(initial)
        self.missing: dict[str, str] = {}  # tensor -> why it could not be seen (filled by each step)
        self._step_began: list[LayerState] = []  # each layer's state as the last step began

    def _pairs(self) -> list[tuple[BoundLayer, LayerSpec]]:
        return list(zip(self.bound, self.spec.layers, strict=True))

    # --- the lockstep Side interface ---------------------------------------------------------------

    def forward_backward(
        self, images: np.ndarray, labels: np.ndarray, names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """One tutorial `train()` step on a batch of one: every tensor it exposes (whatever `names` asks for),
        gradients recovered from the update, in scratch layouts with the batch axis."""
        images, labels = np.asarray(images), np.asarray(labels).reshape(-1)
        if images.ndim == 2:
            images = images[np.newaxis]
        if images.shape[0] != 1 or labels.shape != (1,):
            raise ValueError(
                f"the tutorial's train() steps one image at a time: expected images (1, H, W) and labels (1,), "
                f"got {images.shape} and {labels.shape}"
            )
        image, label = images[0], int(labels[0])
        before = self.parameters()
        self._step_began = [LayerState.of(obj) for obj in self.objects]  # where a layer run alone at this step starts
        tensors: dict[str, np.ndarray] = {}
        self.missing = {}
        last = len(self.bound) - 1
        with np.errstate(all="ignore"):  # overflow shows up as a non-finite tensor in the comparison
            # Each layer is given what the one before returned, as it is, as train() gives it; what is recorded is
            # a private copy, which no later call can change in place.
            out = (image / 255) - 0.5
            out = out if self.bound[0].image_input else out[..., np.newaxis]
            inputs = []
            for index, spec in enumerate(self.spec.layers):
                inputs.append(out)
                out, recorded = self._forward(index, out)
                if index == last:
                    tensors |= self._loss_tensors(index, recorded, label)
                else:
                    tensors[self.spec.name_of(spec.name, "out")] = recorded[np.newaxis]
            gradient = np.zeros(self.spec.num_classes)
            gradient[label] = -1 / out[label]
            for index in reversed(range(len(self.bound))):
                gradient, recorded = self._backprop(index, gradient, inputs[index])
                if recorded is not None:
                    tensors[self.spec.name_of(self.spec.layers[index].name, "d_in")] = recorded[np.newaxis]
            after = self.parameters()
            for name in before:
                layer, param = name.split(".")
                tensors[self.spec.name_of(layer, "d_param", param)] = _recovered(before[name], after[name], self.lr)
        self._d_logits(tensors)
        return {name: tensors[name] for name in self.spec.tensor_names if name in tensors}

    def run_layer(self, feed: LayerFeed) -> dict[str, np.ndarray]:
        """One user layer alone, on the reference's input, output gradient and weights (see
        `parity.lockstep.local`); gradients recovered from its update.

        It runs from the layer's state as it began the step (`LayerState`), so a layer whose results depend on its
        calls so far is judged on the call the step made; then the state it had after the step is put back, and
        NumPy's global random state, so the whole-network run sees one call of it per step."""
        index = next(i for i, spec in enumerate(self.spec.layers) if spec.name == feed.layer.name)
        layer, spec, obj = self.bound[index], self.spec.layers[index], self.objects[index]
        after_step, random_state = LayerState.of(obj), np.random.get_state()
        own = self.parameters()
        names = {param: f"{spec.name}.{param}" for param in feed.params}
        tensors: dict[str, np.ndarray] = {}
        try:
            if self._step_began:
                self._step_began[index].put_back(obj)
            self.load_parameters({**own, **{names[param]: value for param, value in feed.params.items()}})
            loaded = self.parameters()  # as the layer holds them: rounded, in a float32 layer
            with np.errstate(all="ignore"):  # overflow shows up as a non-finite tensor in the comparison
                # Copies: the reference's own tensors, which a layer that works in place on its input (or gradient)
                # would change under the comparison.
                x = feed.inputs[0]
                x = np.array(x[..., 0] if index == 0 and layer.image_input else x.reshape(spec.in_shape))
                out, recorded = self._forward(index, x)
                if index == len(self.bound) - 1:
                    label = int(feed.labels[0])
                    tensors |= self._loss_tensors(index, recorded, label)
                    gradient = np.zeros(self.spec.num_classes)
                    gradient[label] = -1 / out[label]  # as train() starts backprop: from the layer's own probabilities
                else:
                    tensors[self.spec.name_of(spec.name, "out")] = recorded[np.newaxis]
                    gradient = np.array(feed.d_out[0].reshape(spec.out_shape))
                _, d_in = self._backprop(index, gradient, x)
                if d_in is not None:
                    tensors[self.spec.name_of(spec.name, "d_in")] = d_in[np.newaxis]
                after = self.parameters()
                for param, name in names.items():
                    gradient_name = self.spec.name_of(spec.name, "d_param", param)
                    tensors[gradient_name] = _recovered(loaded[name], after[name], self.lr)
        finally:
            after_step.put_back(obj)
            self.load_parameters(own)  # (for a layer without attributes to put back: its weights at least)
            np.random.set_state(random_state)
        self._d_logits(tensors)
        return tensors

    def update(self, lr: float) -> None:
        """No-op: the tutorial's `backprop` already applied SGD at the same lr (checked)."""
        if float(lr) != self.lr:
            raise ValueError(f"lr {lr} differs from the lr {self.lr} this side passes to backprop")

    def parameters(self) -> dict[str, np.ndarray]:
        """Copies of the live parameters, under the spec's names, in scratch layouts."""
        params = {}
        for (layer, spec), obj in zip(self._pairs(), self.objects, strict=True):
            for binding in layer.params:
                value = getattr(obj, binding.attribute)
                if np.shape(value) == binding.shape:
                    value = binding.to_scratch(value)
                params[f"{spec.name}.{binding.param}"] = np.array(value, dtype=np.float64, copy=True)
        return params

    def load_parameters(self, params: dict[str, np.ndarray]) -> None:
        """Set each parameter attribute from `params[name]` (spec names, scratch layouts), in the user's layout.

        Written into the array the attribute holds, so it keeps its dtype (float32 weights stay float32, as in the
        user's own training) and whatever else refers to it (a list of the parameters the update goes through);
        replaced only where it cannot be written in place."""
        for (layer, spec), obj in zip(self._pairs(), self.objects, strict=True):
            for binding in layer.params:
                value = binding.to_user(params[f"{spec.name}.{binding.param}"])
                current = getattr(obj, binding.attribute, None)
                if isinstance(current, np.ndarray) and current.shape == np.shape(value) and current.flags.writeable:
                    current[...] = value
                else:
                    dtype = current.dtype if isinstance(current, np.ndarray) else np.float64
                    setattr(obj, binding.attribute, np.array(value, dtype=dtype, copy=True))

    # --- provenance, for reports ----------------------------------------------------------------------

    def origin(self, tensor: str) -> str:
        """The user's class and member a tensor comes out of, in the user's names: `MaxPool2.backprop`."""
        info = self.spec.tensor(tensor)
        layer = self.bound[self._index(self.spec.judged_at(tensor))]
        if info.role == "out" and info.layer == self.spec.layers[-1].name and layer.logits:
            return f"{layer.cls_name}.{layer.logits}"
        method = layer.methods.forward if info.phase == "forward" else layer.methods.backprop
        return f"{layer.cls_name}.{method}"

    def provenance(self) -> dict[str, str]:
        """How each tensor was obtained from the implementation (or why it was not), in spec order."""
        how = {}
        last = self.spec.layers[-1].name
        for info in self.spec.tensors:
            layer = self.bound[self._index(self.spec.judged_at(info.name))]
            if info.role == "param":
                continue
            if info.role == "loss":
                how[info.name] = "-log(probs[label]), as train() computes it"
            elif info.role == "d_out":
                how[info.name] = "recovered from the bias update: dL/dlogits = dL/dbiases = (before - after) / lr"
            elif info.role == "d_param":
                attribute = next(b.attribute for b in layer.params if b.param == info.param)
                how[info.name] = f"recovered from the update of {layer.cls_name}.{attribute}: (before - after) / lr"
            elif info.role == "out" and info.layer == last:
                how[info.name] = f"{self.origin(info.name)} (cached by forward)"
            else:
                how[info.name] = f"{self.origin(info.name)} return value"
        for name, why in self.missing.items():
            how[name] = f"not compared: {why}"
        return how

    @property
    def recovered(self) -> tuple[str, ...]:
        """The tensors read off the in-place update rather than seen (a wrong update rule shows there too)."""
        last = self.spec.layers[-1].name
        return tuple(
            info.name
            for info in self.spec.tensors
            if info.role == "d_param" or (info.role == "d_out" and info.layer == last)
        )

    # --- one layer's calls -------------------------------------------------------------------------------

    def _index(self, layer_name: str) -> int:
        return next(i for i, spec in enumerate(self.spec.layers) if spec.name == layer_name)

    def _forward(self, index: int, x) -> tuple[object, np.ndarray]:
        """What the layer's forward returned, as it is (for the next layer), and a checked private copy of it."""
        layer, spec = self.bound[index], self.spec.layers[index]
        value = self._call(index, layer.methods.forward, x)
        if index == len(self.bound) - 1:
            shape, layout = (self.spec.num_classes,), "(nodes,) probabilities"
        else:
            shape, layout = spec.out_shape, _layout_text(spec.out_shape)
        return value, self._checked(index, layer.methods.forward, value, shape, layout)

    def _backprop(self, index: int, gradient, x) -> tuple[object, np.ndarray | None]:
        """What the layer's backprop returned, as it is (for the layer before), and a checked private copy of it in
        the spec's input shape (None when the first layer returns None)."""
        layer, spec = self.bound[index], self.spec.layers[index]
        args = (gradient, self.lr) if layer.methods.backprop_takes_lr else (gradient,)
        value = self._call(index, layer.methods.backprop, *args)
        if value is None and index == 0:
            self.missing[self.spec.name_of(spec.name, "d_in")] = (
                f"{layer.cls_name}.{layer.methods.backprop} returned None"
            )
            return None, None
        array = self._checked(index, layer.methods.backprop, value, None, "")
        if array.shape != np.shape(x) and array.size != np.size(x):
            raise ImplCrash(
                layer.cls_name,
                layer.methods.backprop,
                f"returned shape {array.shape}, expected {np.shape(x)}: the shape of its input",
                spec.name,
            )
        return value, array.reshape(spec.in_shape)

    def _loss_tensors(self, index: int, probs: np.ndarray, label: int) -> dict[str, np.ndarray]:
        layer, spec = self.bound[index], self.spec.layers[index]
        tensors = {"probs": probs[np.newaxis], "loss": np.asarray(-np.log(probs[label]), dtype=np.float64)}
        logits = getattr(self.objects[index], layer.logits, None) if layer.logits else None
        name = self.spec.name_of(spec.name, "out")
        if layer.logits_unseen:
            self.missing[name] = layer.logits_unseen
        elif isinstance(logits, np.ndarray) and logits.shape == probs.shape:
            tensors[name] = np.array(logits, dtype=np.float64)[np.newaxis]
        else:
            cached = f"no {layer.logits} of shape {probs.shape}" if layer.logits else "no logits the check could find"
            self.missing[name] = f"{layer.cls_name} caches {cached}"
        return tensors

    def _d_logits(self, tensors: dict[str, np.ndarray]) -> None:
        """dL/dlogits of a batch of one is the last layer's bias gradient; a shape the update changed is left for
        the comparison."""
        last = self.spec.layers[-1].name
        biases = tensors.get(self.spec.name_of(last, "d_param", "biases"))
        if biases is not None:
            tensors[self.spec.name_of(last, "d_out")] = biases[np.newaxis].copy() if biases.ndim == 1 else biases.copy()

    def _call(self, index: int, method: str, *args):
        layer = self.bound[index]
        function = getattr(self.objects[index], method)
        try:
            return guarded(
                layer.cls_name, method, self.spec.layers[index].name, function, *args, timeout=self.arch.timeout
            )
        except ImplCrash as crash:
            hint = "" if crash.timed_out else self._given(index, method == layer.methods.forward, args[0])
            if not hint:
                raise
            raise ImplCrash(crash.cls, crash.method, crash.detail + hint, crash.layer) from crash.__cause__

    def _given(self, index: int, forward: bool, value: object) -> str:
        """What a layer that raised was given, when that is its neighbour's return value and not an array of the
        shape train() hands on in the tutorial's interface: the likelier culprit is then the neighbour."""
        neighbour = index - 1 if forward else index + 1
        if not 0 <= neighbour < len(self.bound):
            return ""  # the image, or the loss's gradient: made here, as train() makes them
        spec = self.spec.layers[index]
        expected = spec.in_shape if forward else spec.out_shape
        if isinstance(value, np.ndarray) and value.shape == expected:
            return ""
        source = self.bound[neighbour]
        method = source.methods.forward if forward else source.methods.backprop
        what = f"of shape {value.shape}" if isinstance(value, np.ndarray) else f"a {type(value).__name__}"
        return (
            f" (given {source.cls_name}.{method}'s return value, {what}, as it is; the tutorial's layers hand on an "
            f"array of shape {expected})"
        )

    def _checked(self, index: int, method: str, value, shape: tuple[int, ...] | None, layout: str) -> np.ndarray:
        """A private float64 copy of a returned array, which must have `shape` when given (else ImplCrash)."""
        layer, name = self.bound[index], self.spec.layers[index].name
        expected = "an array" if shape is None else f"an array of shape {shape}"
        array = returned_array(layer.cls_name, method, name, value, expected)
        if shape is not None and array.shape != shape:
            raise ImplCrash(layer.cls_name, method, f"returned shape {array.shape}, expected {shape}: {layout}", name)
        return array


TutorialSide = ImplSide  # the name this side had when it drove only the tutorial's three classes


def _check_attribute(arch: Architecture, layer: BoundLayer, obj, binding: ParamBinding) -> None:
    value = getattr(obj, binding.attribute, None)
    if np.shape(value) != binding.shape:
        raise ImplError(
            f"{arch.impl.label}: {layer.cls_name}.{binding.attribute} has shape {np.shape(value)} in a fresh "
            f"{layer.call.text()}, but {binding.shape} when the architecture was read; construct it the same way"
        )


def _layout_text(shape: tuple[int, ...]) -> str:
    return "HWC (height, width, channels)" if len(shape) == 3 else "(nodes,)"


def _recovered(before: np.ndarray, after: np.ndarray, lr: float) -> np.ndarray:
    """The gradient an SGD step applied: (before - after) / lr."""
    if before.shape != after.shape:
        return after  # the update changed the shape; the comparison reports the shape mismatch
    return (before - after) / lr
