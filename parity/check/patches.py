"""The injected bugs' code: the mixin classes that `parity.check.bugs` puts in front of a correct implementation's
class, each overriding one or two of its methods, with the line that differs from the correct code marked `# BUG:`.

Each is written against that implementation's own helpers (see `parity.check.bugs`), so it applies to the example it
patches, parity/check/examples/fixed_cnn or parity/check/examples/two_conv_cnn, and not to arbitrary code.
"""

from __future__ import annotations

import numpy as np

# --- Conv3x3 (conv1) --------------------------------------------------------------------------------------------------


class FlippedKernel:
    def forward(self, input):
        self.last_input = input
        # BUG: a textbook convolution flips the kernel; Conv2d (and the tutorial) cross-correlate.
        return np.einsum("ijkl,fkl->ijf", self.regions(input), self.filters[:, ::-1, ::-1])


class LrAppliedTwice:
    def backprop(self, d_L_d_out, learn_rate):
        # BUG: the gradient is pre-scaled by the learning rate, then the update scales it again.
        d_L_d_filters = learn_rate * np.einsum("ijf,ijkl->fkl", d_L_d_out, self.regions(self.last_input))
        out_h, out_w, _ = d_L_d_out.shape
        d_L_d_input = np.zeros(self.last_input.shape)
        for k in range(3):
            for l in range(3):
                d_L_d_input[k : k + out_h, l : l + out_w] += d_L_d_out @ self.filters[:, k, l]
        self.filters -= learn_rate * d_L_d_filters
        return d_L_d_input


class Float32Conv:
    def forward(self, input):
        self.last_input = input
        # BUG: computed in float32 "to halve memory and time", then cast back; the output is off by ~1e-8.
        regions = self.regions(input).astype(np.float32)
        return np.einsum("ijkl,fkl->ijf", regions, self.filters.astype(np.float32)).astype(np.float64)


class LoopOffByOne:
    def forward(self, input):
        self.last_input = input
        h, w = input.shape
        output = np.zeros((h - 2, w - 2, self.num_filters))
        # BUG: range(h - 3) instead of range(h - 2): the last row and column of the output stay zero.
        for i in range(h - 3):
            for j in range(w - 3):
                output[i, j] = np.sum(input[i : (i + 3), j : (j + 3)] * self.filters, axis=(1, 2))
        return output


class InputGradientFlipped:
    def backprop(self, d_L_d_out, learn_rate):
        d_L_d_filters = np.einsum("ijf,ijkl->fkl", d_L_d_out, self.regions(self.last_input))
        out_h, out_w, _ = d_L_d_out.shape
        d_L_d_input = np.zeros(self.last_input.shape)
        for k in range(3):
            for l in range(3):
                # BUG: "the backward of a convolution uses the flipped kernel", applied to a layer that
                # already cross-correlates: the input gradient uses filters[:, 2 - k, 2 - l].
                d_L_d_input[k : k + out_h, l : l + out_w] += d_L_d_out @ self.filters[:, 2 - k, 2 - l]
        self.filters -= learn_rate * d_L_d_filters
        return d_L_d_input


# --- MaxPool2 (pool1) -------------------------------------------------------------------------------------------------


class LastMax:
    def max_position(self):
        # BUG: a loop that kept the max with `>=` ends at the *last* maximum of a tied window (PyTorch: first).
        return 3 - self.windows(self.last_input)[..., ::-1].argmax(axis=-1)


class OddEdgeShift:
    def backprop(self, d_L_d_out):
        h, w, c = self.last_input.shape
        new_h, new_w = h // 2, w // 2
        routed = np.zeros((new_h, new_w, c, 4))
        np.put_along_axis(routed, self.max_position()[..., np.newaxis], d_L_d_out[..., np.newaxis], axis=-1)
        d_L_d_input = np.zeros(self.last_input.shape)
        # BUG: the windows are written back aligned to the bottom-right, as if an odd input's leftover row and
        # column were at the top-left; identical for even sizes, shifted by one for odd ones.
        d_L_d_input[h - 2 * new_h :, w - 2 * new_w :] = (
            routed.reshape(new_h, new_w, c, 2, 2).transpose(0, 3, 1, 4, 2).reshape(2 * new_h, 2 * new_w, c)
        )
        return d_L_d_input


class SwappedIndices:
    def backprop(self, d_L_d_out):
        d_L_d_input = np.zeros(self.last_input.shape)
        position = self.max_position()
        new_h, new_w, c = position.shape
        for i in range(new_h):
            for j in range(new_w):
                for f in range(c):
                    i2, j2 = divmod(int(position[i, j, f]), 2)
                    # BUG: i and j swapped when writing back (square images hide it from every shape check).
                    d_L_d_input[j * 2 + i2, i * 2 + j2, f] = d_L_d_out[i, j, f]
        return d_L_d_input


# --- Softmax (dense1, and the softmax of the loss) --------------------------------------------------------------------


class TransposedWeightGradient:
    def backprop(self, d_L_d_out, learn_rate):
        d_L_d_t = self.totals_gradient(d_L_d_out)
        # BUG: the outer product taken the other way round, (nodes, input_len), then reshaped (not transposed)
        # to silence the shape error in the update.
        d_L_d_w = (d_L_d_t[np.newaxis].T @ self.last_input[np.newaxis]).reshape(self.weights.shape)
        d_L_d_inputs = self.weights @ d_L_d_t
        self.weights -= learn_rate * d_L_d_w
        self.biases -= learn_rate * d_L_d_t
        return d_L_d_inputs.reshape(self.last_input_shape)


class ChwFlatten:
    def forward(self, input):
        self.last_input_shape = input.shape
        # BUG: ported from PyTorch, flattened channel-first as nn.Flatten does on NCHW; the weights' rows are HWC.
        input = input.transpose(2, 0, 1).flatten()
        self.last_input = input
        totals = np.dot(input, self.weights) + self.biases
        self.last_totals = totals
        exp = np.exp(totals - np.max(totals))
        self.last_probs = exp / np.sum(exp, axis=0)
        return self.last_probs

    def backprop(self, d_L_d_out, learn_rate):
        h, w, c = self.last_input_shape
        self.last_input_shape = (c, h, w)  # consistent with the CHW flatten, so the shapes all work
        return super().backprop(d_L_d_out, learn_rate).transpose(1, 2, 0)


class MissingBiasUpdate:
    def backprop(self, d_L_d_out, learn_rate):
        d_L_d_t = self.totals_gradient(d_L_d_out)
        d_L_d_w = self.last_input[np.newaxis].T @ d_L_d_t[np.newaxis]
        d_L_d_inputs = self.weights @ d_L_d_t
        self.weights -= learn_rate * d_L_d_w
        # BUG: forgot `self.biases -= learn_rate * d_L_d_b`.
        return d_L_d_inputs.reshape(self.last_input_shape)


class JacobianSign:
    def totals_gradient(self, d_L_d_out):
        p = self.last_probs
        (nonzero,) = np.nonzero(d_L_d_out)
        i = nonzero[0]
        # BUG: the minus sign of d out_i / d t_k = -p_i p_k (k != i) dropped while copying the derivation.
        d_out_d_t = p[i] * p
        d_out_d_t[i] = p[i] * (1 - p[i])
        return d_L_d_out[i] * d_out_d_t


class InputGradientAfterUpdate:
    def backprop(self, d_L_d_out, learn_rate):
        d_L_d_t = self.totals_gradient(d_L_d_out)
        d_L_d_w = self.last_input[np.newaxis].T @ d_L_d_t[np.newaxis]
        self.weights -= learn_rate * d_L_d_w
        self.biases -= learn_rate * d_L_d_t
        # BUG: the input gradient computed after the update, with the new weights (tidied to "return at the end").
        d_L_d_inputs = self.weights @ d_L_d_t
        return d_L_d_inputs.reshape(self.last_input_shape)


class BiasGradientMean:
    def backprop(self, d_L_d_out, learn_rate):
        d_L_d_t = self.totals_gradient(d_L_d_out)
        d_L_d_w = self.last_input[np.newaxis].T @ d_L_d_t[np.newaxis]
        # BUG: the bias gradient averaged over the output nodes, like a batch mean.
        d_L_d_b = d_L_d_t / len(d_L_d_t)
        d_L_d_inputs = self.weights @ d_L_d_t
        self.weights -= learn_rate * d_L_d_w
        self.biases -= learn_rate * d_L_d_b
        return d_L_d_inputs.reshape(self.last_input_shape)


class UnshiftedExp:
    def forward(self, input):
        self.last_input_shape = input.shape
        input = input.flatten()
        self.last_input = input
        totals = np.dot(input, self.weights) + self.biases
        self.last_totals = totals
        # BUG: the max-subtraction removed as a no-op ("softmax is shift-invariant"); exp overflows past ~709.
        exp = np.exp(totals)
        self.last_probs = exp / np.sum(exp, axis=0)
        return self.last_probs


# --- the two-conv network (parity/check/examples/two_conv_cnn) ----------------------------------------------------


class DeepFiltersReadChannelsLast:
    def forward(self, input):
        self.last_input = input
        f, c, k, _ = self.filters.shape
        # BUG: the (F, C, K, K) filters reshaped as if they were (F, K, K, C), as in the tutorial-style code it came
        # from; the shapes still fit when C is reshaped in, so nothing complains.
        filters = self.filters.reshape(f, k, k, c).transpose(0, 3, 1, 2)
        return np.einsum("ijckl,fckl->ijf", self.regions(input), filters)


class DeepInputGradientFirstChannel:
    def input_gradient(self, d_L_d_out):
        out_h, out_w, _ = d_L_d_out.shape
        d_L_d_input = np.zeros(self.last_input.shape)
        for k in range(5):
            for l in range(5):
                # BUG: written for one input channel and never generalised: only channel 0 gets its gradient.
                d_L_d_input[k : k + out_h, l : l + out_w, 0] += d_L_d_out @ self.filters[:, 0, k, l]
        return d_L_d_input


class DeepFilterGradientSummedOverChannels:
    def backprop(self, d_L_d_out, learn_rate):
        per_channel = np.einsum("ijf,ijckl->fckl", d_L_d_out, self.regions(self.last_input))
        # BUG: the channels summed as in the forward pass, then broadcast back: every channel gets the same update.
        d_L_d_filters = np.broadcast_to(per_channel.sum(axis=1, keepdims=True), self.filters.shape)
        d_L_d_input = self.input_gradient(d_L_d_out)
        self.filters -= learn_rate * d_L_d_filters
        return d_L_d_input


class ReluGradientUnmasked:
    def backprop(self, d_L_d_out):
        # BUG: "ReLU's derivative is 1" (for positive inputs): the gradient passes through everywhere.
        return d_L_d_out


class ReluGradientAtZero:
    def backprop(self, d_L_d_out):
        # BUG: `>=` for `>`: at an input of exactly 0 the gradient passes, where PyTorch passes none.
        return d_L_d_out * (self.last_input >= 0)


class FirstConvFirstWindowOnly:
    def backprop(self, d_L_d_out, learn_rate):
        # BUG: a `break` meant for the filter loop ends the region loop: only the first window's share is summed.
        d_L_d_filters = np.einsum("f,kl->fkl", d_L_d_out[0, 0], self.regions(self.last_input)[0, 0])
        out_h, out_w, _ = d_L_d_out.shape
        d_L_d_input = np.zeros(self.last_input.shape)
        for k in range(5):
            for l in range(5):
                d_L_d_input[k : k + out_h, l : l + out_w] += d_L_d_out @ self.filters[:, k, l]
        self.filters -= learn_rate * d_L_d_filters
        return d_L_d_input
