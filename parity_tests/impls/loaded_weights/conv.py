# The corrected tutorial code, its constructors changed as in code that ships trained weights: each takes the
# saved array, or anything else (a string) for random weights; predict.py builds it for 25 classes.
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class Conv3x3:
    # A Convolution layer using 3x3 filters.

    def __init__(self, num_filters, saved_filters):
        self.num_filters = num_filters
        if isinstance(saved_filters, str):
            self.filters = np.random.standard_normal((num_filters, 3, 3)) / 9
        else:
            self.filters = saved_filters

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
