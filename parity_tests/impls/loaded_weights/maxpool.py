# The corrected tutorial code, its constructors changed as in code that ships trained weights: each takes the
# saved array, or anything else (a string) for random weights; predict.py builds it for 25 classes.
import numpy as np


class MaxPool2:
    # A Max Pooling layer using a pool size of 2.

    def windows(self, image):
        """(h, w, c) -> (h // 2, w // 2, c, 4): each 2x2 window's elements in row-major order (a copy)."""
        h, w, c = image.shape
        new_h, new_w = h // 2, w // 2
        blocks = image[: 2 * new_h, : 2 * new_w].reshape(new_h, 2, new_w, 2, c)
        return blocks.transpose(0, 2, 4, 1, 3).reshape(new_h, new_w, c, 4)

    def forward(self, input):
        """(h, w, c) -> (h // 2, w // 2, c)."""
        self.last_input = input
        return self.windows(input).max(axis=-1)

    def max_position(self):
        """Where each window's gradient goes: its first maximum, 0..3 row-major (np.argmax returns the first)."""
        return self.windows(self.last_input).argmax(axis=-1)  # (h // 2, w // 2, c)

    def backprop(self, d_L_d_out):
        """Route each window's gradient to its first maximum; every other element gets zero."""
        h, w, c = self.last_input.shape
        new_h, new_w = h // 2, w // 2
        routed = np.zeros((new_h, new_w, c, 4))
        np.put_along_axis(routed, self.max_position()[..., np.newaxis], d_L_d_out[..., np.newaxis], axis=-1)
        d_L_d_input = np.zeros(self.last_input.shape)
        d_L_d_input[: 2 * new_h, : 2 * new_w] = (
            routed.reshape(new_h, new_w, c, 2, 2).transpose(0, 3, 1, 4, 2).reshape(2 * new_h, 2 * new_w, c)
        )
        return d_L_d_input
