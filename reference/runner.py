"""Drive the twin a step at a time and hand back the step's named tensors in scratch layouts, by spec name."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.sgd import sgd

from reference.bridge import ParameterLink, load_into_torch, parameter_links, parameters_to_scratch
from reference.layouts import activation_to_scratch
from reference.twin import Twin
from scratch._checks import check_images, check_labels, check_lr  # the same refusals as the scratch network
from scratch.spec import TensorInfo


@dataclass
class _Step:
    """What one forward + backward produced, in torch layouts, for the extractors to read."""

    activations: list[torch.Tensor]  # [image, layer 1 out, ..., logits]: activation i is layer i+1's input
    loss: torch.Tensor
    param_grads: dict[str, torch.Tensor]  # by spec name
    activation_grads: dict[int, torch.Tensor]  # by position in `activations`


Extractor = Callable[[_Step], np.ndarray]


@dataclass(frozen=True)
class _Plan:
    """For one set of requested names: which activation gradients to ask autograd for, and how to read each name."""

    activation_targets: tuple[int, ...]  # positions in `_Step.activations`
    image_needs_grad: bool
    extractors: tuple[tuple[str, Extractor], ...]


class ReferenceRunner:
    """The twin with PyTorch's plain SGD: one forward + backward per call, the update separate.

    The update calls `torch.optim.sgd.sgd`, the function `torch.optim.SGD.step` runs on CPU tensors (no momentum,
    no weight decay: one `param.add_(grad, alpha=-lr)` per parameter), so the arithmetic is PyTorch's own and the
    weights bit-identical to `torch.optim.SGD`'s (tested). It skips what `step` adds around it for `torch.compile`
    and the profiler: a wrapper that imports `torch._dynamo` at the first step, about as long as importing torch.
    """

    def __init__(self, twin: Twin, lr: float = 0.005) -> None:
        if not isinstance(twin, Twin):
            raise ValueError(
                f"twin: expected a reference.Twin (from reference.to_torch(net)), got {type(twin).__name__}"
            )
        self.twin, self.spec, self.dtype = twin, twin.spec, twin.dtype
        self.lr = check_lr(lr)
        self._links = parameter_links(twin)  # spec name, torch tensor and layout converter per parameter
        self._param_tensors = tuple(link.tensor for link in self._links)
        self._step_names = tuple(info.name for info in self.spec.tensors if info.role != "param")
        self._plans: dict[tuple[str, ...] | None, _Plan] = {}

    def forward_backward(
        self, images: np.ndarray, labels: object, names: Iterable[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Forward, mean cross-entropy, one backward: the requested tensors (all of the step's by default) as
        NumPy arrays in scratch layouts; parameter gradients always land in `.grad` for `update`."""
        if names is not None and (isinstance(names, str) or not isinstance(names, Iterable)):
            raise ValueError(f"names: expected a sequence of tensor names (or None for all), got {names!r}")
        plan = self._plan(None if names is None else tuple(names))
        x = self._image_tensor(images)
        targets = torch.from_numpy(check_labels(labels, self.spec.num_classes, images).astype(np.int64, copy=False))
        activations = [x.requires_grad_(plan.image_needs_grad)]
        for layer in self.spec.layers:
            activations.append(self.twin.forward_layer(layer, activations[-1]))
        loss = F.cross_entropy(activations[-1], targets)
        if plan.activation_targets:
            wanted = tuple(activations[position] for position in plan.activation_targets)
            # One backward pass for exactly the gradients needed; `update` reads the parameters' from `.grad`.
            gradients = torch.autograd.grad(loss, self._param_tensors + wanted)
            for tensor, gradient in zip(self._param_tensors, gradients, strict=False):
                tensor.grad = gradient
        else:  # the parameters' gradients alone: the bare training step's `backward`, lighter than autograd.grad's
            for tensor in self._param_tensors:
                tensor.grad = None  # backward adds to a gradient already there (a second call without `update`)
            loss.backward()
            gradients = tuple(tensor.grad for tensor in self._param_tensors)
        step = _Step(
            activations,
            loss,
            {link.name: gradient for link, gradient in zip(self._links, gradients, strict=False)},
            dict(zip(plan.activation_targets, gradients[len(self._links) :], strict=True)),
        )
        return {name: extract(step) for name, extract in plan.extractors}

    def update(self, lr: float | None = None) -> None:
        """One SGD step from the last backward's gradients (at `lr` from now on, if given), then clear them."""
        if lr is not None:
            self.lr = check_lr(lr)
        params = [tensor for tensor in self._param_tensors if tensor.grad is not None]  # as `torch.optim.SGD.step`
        if self._param_tensors and not params:  # as scratch's update: gradients are used up by the update they make
            raise ValueError("update: no gradients since the last update; run forward_backward before each update")
        with torch.no_grad():
            sgd(
                params,
                [tensor.grad for tensor in params],
                [None] * len(params),
                foreach=False,  # what `torch.optim.SGD` picks for CPU tensors
                weight_decay=0.0,
                momentum=0.0,
                lr=self.lr,
                dampening=0.0,
                nesterov=False,
                maximize=False,
            )
        for tensor in self._param_tensors:  # recorded gradients may be views of these: no later backward may add
            tensor.grad = None

    @torch.no_grad()
    def evaluate(self, images: np.ndarray, labels: object) -> tuple[float, int]:
        """Mean loss and the number classified right, without backward."""
        x = self._image_tensor(images)  # the images first: how many labels are wanted depends on them
        targets = torch.from_numpy(check_labels(labels, self.spec.num_classes, images).astype(np.int64, copy=False))
        logits = self.twin(x)
        loss = F.cross_entropy(logits, targets)
        return float(loss), int((logits.argmax(dim=1) == targets).sum())

    def parameters(self) -> dict[str, np.ndarray]:
        """The twin's parameters in scratch layouts, by spec name (copies)."""
        return parameters_to_scratch(self.twin, self._links)

    def load_parameters(self, params: dict[str, np.ndarray]) -> None:
        """Set the twin's parameters from scratch-layout arrays by spec name (all checked first)."""
        load_into_torch(self.twin, params)

    def _image_tensor(self, images: np.ndarray) -> torch.Tensor:
        """Raw `(H, W)` or `(N, H, W)` pixels as `pixels / 255 - 0.5` in the twin's dtype, `(N, 1, H, W)`."""
        batch = check_images(images, self.spec.image_shape)  # (N, H, W), a view
        pixels = torch.from_numpy(np.ascontiguousarray(batch)).to(self.dtype)
        return (pixels / 255 - 0.5).unsqueeze(1)  # the same two roundings as scratch's normalisation (tested)

    def _plan(self, names: tuple[str, ...] | None) -> _Plan:
        """The cached plan for `names` (None: every tensor of the step)."""
        if names not in self._plans:
            self._plans[names] = self._make_plan(self._step_names if names is None else names)
        return self._plans[names]

    def _make_plan(self, names: tuple[str, ...]) -> _Plan:
        unknown = [name for name in names if name not in self._step_names]
        if unknown:
            raise ValueError(
                f"forward_backward: {', '.join(map(repr, unknown))} is not a tensor of a {self.spec.text} step "
                f"(the parameters after the update come from parameters()); expected some of "
                f"{', '.join(self._step_names)}"
            )
        positions = {layer.name: index for index, layer in enumerate(self.spec.layers)}
        extractors, targets = [], []
        for name in names:
            info = self.spec.tensor(name)
            position = positions.get(info.layer, -1)
            if info.role in ("d_in", "d_out"):
                targets.append(position + (info.role == "d_out"))  # layer i's input is activation i
            extractors.append((name, _extractor(info, position, self._links)))
        targets = tuple(sorted(set(targets)))
        first_with_params = next(i for i, layer in enumerate(self.spec.layers) if layer.params)
        # Activations up to the first layer with parameters depend on nothing that requires a gradient but the image.
        image_needs_grad = any(position <= first_with_params for position in targets)
        return _Plan(targets, image_needs_grad, tuple(extractors))


def _extractor(info: TensorInfo, position: int, links: tuple[ParameterLink, ...]) -> Extractor:
    """How to read one named tensor from a `_Step` as a NumPy array in scratch layout (views of fresh tensors)."""
    if info.role == "out":
        return lambda step: activation_to_scratch(step.activations[position + 1].detach().numpy())
    if info.role == "probs":
        return lambda step: torch.softmax(step.activations[-1].detach(), dim=1).numpy()
    if info.role == "loss":
        return lambda step: step.loss.detach().numpy()
    if info.role == "d_param":
        link = next(link for link in links if link.name == f"{info.layer}.{info.param}")
        return lambda step: link.to_scratch(step.param_grads[link.name].numpy())
    target = position + (info.role == "d_out")  # d_in: the layer's input; d_out: its output (the logits)
    return lambda step: activation_to_scratch(step.activation_grads[target].numpy())
