# A correct two-conv CNN in the tutorial's style ("CNNs, Part 2", shared/seed/000_edd2bff2b060ca47.txt), of the
# kind people publish once the tutorial works: a 5x5 first conv on the 2-D image, a ReLU, a 2x2 max-pool, a 5x5
# conv on the pooled channels with its filters laid out channel-first as PyTorch's Conv2d.weight is, a ReLU, a
# pool, and the tutorial's Softmax. Every layer has `forward(input)` and `backprop(d_L_d_out[, learn_rate])`;
# backprop updates the weights in place and returns the gradient for its input. The network, as cnn.py builds it:
#   ConvFirst(8)       28x28   -> 24x24x8     filters (8, 5, 5)
#   ReLU(), MaxPool2() 24x24x8 -> 12x12x8
#   ConvDeep(16, 8)    12x12x8 -> 8x8x16      filters (16, 8, 5, 5): (F, C, K, K)
#   ReLU(), MaxPool2() 8x8x16  -> 4x4x16
#   Softmax(256, 10)   4x4x16  -> 10
# Vectorised (einsum over sliding windows), so the self-test's runs stay fast; the maths is the tutorial's:
# cross-correlation, valid padding, no conv bias, first-maximum pool routing (PyTorch's), a max-shifted softmax.
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

K = 5  # kernel size of both convs


class ConvFirst:
    # A 5x5 convolution on the 2-D image.

    def __init__(self, num_filters, rng=None):
        self.num_filters = num_filters
        rng = np.random.default_rng() if rng is None else rng
        self.filters = rng.standard_normal((num_filters, K, K)) / (K * K)

    def regions(self, image):
        """Every 5x5 region of a 2-D image as a (h - 4, w - 4, 5, 5) view (no copy)."""
        return sliding_window_view(image, (K, K))

    def forward(self, input):
        """(h, w) image -> (h - 4, w - 4, num_filters) HWC."""
        self.last_input = input
        return np.einsum("ijkl,fkl->ijf", self.regions(input), self.filters)

    def backprop(self, d_L_d_out, learn_rate):
        """Update the filters; return dL/d(input), computed with the filters *before* the update."""
        d_L_d_filters = np.einsum("ijf,ijkl->fkl", d_L_d_out, self.regions(self.last_input))
        out_h, out_w, _ = d_L_d_out.shape
        d_L_d_input = np.zeros(self.last_input.shape)
        for k in range(K):
            for l in range(K):
                d_L_d_input[k : k + out_h, l : l + out_w] += d_L_d_out @ self.filters[:, k, l]
        self.filters -= learn_rate * d_L_d_filters
        return d_L_d_input


class ConvDeep:
    # A 5x5 convolution on a (h, w, channels) input; filters (num_filters, channels, 5, 5), as Conv2d keeps them.

    def __init__(self, num_filters, num_channels, rng=None):
        self.num_filters = num_filters
        rng = np.random.default_rng() if rng is None else rng
        self.filters = rng.standard_normal((num_filters, num_channels, K, K)) / (K * K * num_channels)

    def regions(self, input):
        """Every 5x5 region of an (h, w, c) input as a (h - 4, w - 4, c, 5, 5) view (no copy)."""
        return sliding_window_view(input, (K, K), axis=(0, 1))

    def forward(self, input):
        """(h, w, c) -> (h - 4, w - 4, num_filters) HWC."""
        self.last_input = input
        return np.einsum("ijckl,fckl->ijf", self.regions(input), self.filters)

    def input_gradient(self, d_L_d_out):
        """dL/d(input): each output pixel sends dL/dout[i, j, :] . filters[:, c, k, l] to input (i + k, j + l, c)."""
        out_h, out_w, _ = d_L_d_out.shape
        d_L_d_input = np.zeros(self.last_input.shape)
        for k in range(K):
            for l in range(K):
                d_L_d_input[k : k + out_h, l : l + out_w] += d_L_d_out @ self.filters[:, :, k, l]
        return d_L_d_input

    def backprop(self, d_L_d_out, learn_rate):
        """Update the filters; return dL/d(input), computed with the filters *before* the update."""
        d_L_d_filters = np.einsum("ijf,ijckl->fckl", d_L_d_out, self.regions(self.last_input))
        d_L_d_input = self.input_gradient(d_L_d_out)
        self.filters -= learn_rate * d_L_d_filters
        return d_L_d_input


class ReLU:
    # max(x, 0); the gradient passes where the input was positive (PyTorch's rule at exactly 0: no gradient).

    def forward(self, input):
        self.last_input = input
        return np.maximum(input, 0)

    def backprop(self, d_L_d_out):
        return d_L_d_out * (self.last_input > 0)


class MaxPool2:
    # A 2x2 max-pool; a tied window sends its gradient to its first maximum in row-major order, as PyTorch does.

    def windows(self, image):
        """(h, w, c) -> (h // 2, w // 2, c, 4): each 2x2 window's elements in row-major order (a copy)."""
        h, w, c = image.shape
        new_h, new_w = h // 2, w // 2
        blocks = image[: 2 * new_h, : 2 * new_w].reshape(new_h, 2, new_w, 2, c)
        return blocks.transpose(0, 2, 4, 1, 3).reshape(new_h, new_w, c, 4)

    def forward(self, input):
        self.last_input = input
        return self.windows(input).max(axis=-1)

    def max_position(self):
        """Where each window's gradient goes: its first maximum, 0..3 row-major (np.argmax returns the first)."""
        return self.windows(self.last_input).argmax(axis=-1)

    def backprop(self, d_L_d_out):
        h, w, c = self.last_input.shape
        new_h, new_w = h // 2, w // 2
        routed = np.zeros((new_h, new_w, c, 4))
        np.put_along_axis(routed, self.max_position()[..., np.newaxis], d_L_d_out[..., np.newaxis], axis=-1)
        d_L_d_input = np.zeros(self.last_input.shape)
        d_L_d_input[: 2 * new_h, : 2 * new_w] = (
            routed.reshape(new_h, new_w, c, 2, 2).transpose(0, 3, 1, 4, 2).reshape(2 * new_h, 2 * new_w, c)
        )
        return d_L_d_input


class Softmax:
    # A fully-connected layer with softmax: weights (input_len, nodes) on the HWC-flattened input.

    def __init__(self, input_len, nodes, rng=None):
        rng = np.random.default_rng() if rng is None else rng
        self.weights = rng.standard_normal((input_len, nodes)) / input_len
        self.biases = np.zeros(nodes)

    def forward(self, input):
        self.last_input_shape = input.shape
        self.last_input = input.flatten()
        self.last_totals = np.dot(self.last_input, self.weights) + self.biases
        exp = np.exp(self.last_totals - np.max(self.last_totals))
        self.last_probs = exp / np.sum(exp)
        return self.last_probs

    def totals_gradient(self, d_L_d_out):
        """dL/dtotals: only the label's entry i of d_L_d_out is nonzero; d out_i / d totals = p_i (onehot_i - p)."""
        p = self.last_probs
        i = np.nonzero(d_L_d_out)[0][0]
        d_out_d_t = -p[i] * p
        d_out_d_t[i] = p[i] * (1 - p[i])
        return d_L_d_out[i] * d_out_d_t

    def backprop(self, d_L_d_out, learn_rate):
        d_L_d_t = self.totals_gradient(d_L_d_out)
        d_L_d_w = self.last_input[np.newaxis].T @ d_L_d_t[np.newaxis]
        d_L_d_inputs = self.weights @ d_L_d_t
        self.weights -= learn_rate * d_L_d_w
        self.biases -= learn_rate * d_L_d_t
        return d_L_d_inputs.reshape(self.last_input_shape)
