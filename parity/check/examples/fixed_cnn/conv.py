# A corrected Conv3x3 with the tutorial's interface ("CNNs, Part 2", shared/seed/000_edd2bff2b060ca47.txt):
# `forward(image)` on a 2-D image, `backprop(d_L_d_out, learn_rate)` that updates `filters` in place and,
# unlike the tutorial, returns the gradient for its input, so a checker can compare it.
# Vectorised (one einsum over all 3x3 regions) so the self-test's many runs stay fast; the math is the
# tutorial's: out[i, j, f] = sum(region(i, j) * filters[f]), cross-correlation, valid padding, no bias.
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class Conv3x3:
    # A Convolution layer using 3x3 filters.

    def __init__(self, num_filters, rng=None):
        self.num_filters = num_filters
        rng = np.random.default_rng() if rng is None else rng
        # (num_filters, 3, 3), divided by 9 to reduce the variance of the initial values
        self.filters = rng.standard_normal((num_filters, 3, 3)) / 9

    def regions(self, image):
        """Every 3x3 region of a 2-D image as a (h - 2, w - 2, 3, 3) view (no copy)."""
        return sliding_window_view(image, (3, 3))

    def forward(self, input):
        """(h, w) image -> (h - 2, w - 2, num_filters) HWC."""
        self.last_input = input
        return np.einsum("ijkl,fkl->ijf", self.regions(input), self.filters)

    def backprop(self, d_L_d_out, learn_rate):
        """Update the filters; return dL/d(input), computed with the filters *before* the update."""
        # dL/dfilters[f] = sum over regions of dL/dout[i, j, f] * region(i, j)
        d_L_d_filters = np.einsum("ijf,ijkl->fkl", d_L_d_out, self.regions(self.last_input))
        # Each output pixel (i, j) sends dL/dout[i, j, :] . filters[:, k, l] back to input pixel (i + k, j + l).
        out_h, out_w, _ = d_L_d_out.shape
        d_L_d_input = np.zeros(self.last_input.shape)
        for k in range(3):
            for l in range(3):
                d_L_d_input[k : k + out_h, l : l + out_w] += d_L_d_out @ self.filters[:, k, l]

        self.filters -= learn_rate * d_L_d_filters
        return d_L_d_input
