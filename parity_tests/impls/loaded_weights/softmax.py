# The corrected tutorial code, its constructors changed as in code that ships trained weights: each takes the
# saved array, or anything else (a string) for random weights; predict.py builds it for 25 classes.
import numpy as np


class Softmax:
    # A standard fully-connected layer with softmax activation.

    def __init__(self, input_len, nodes, saved_weights, saved_biases):
        if isinstance(saved_weights, str):
            self.weights = np.random.standard_normal((input_len, nodes)) / input_len
            self.biases = np.zeros(nodes)
        else:
            self.weights, self.biases = saved_weights, saved_biases

    def forward(self, input):
        """Any-shaped input, flattened (HWC order) -> (nodes,) probabilities."""
        self.last_input_shape = input.shape
        input = input.flatten()
        self.last_input = input

        totals = np.dot(input, self.weights) + self.biases
        self.last_totals = totals

        exp = np.exp(totals - np.max(totals))  # shift-invariant; the largest exponent is 0
        self.last_probs = exp / np.sum(exp, axis=0)
        return self.last_probs

    def totals_gradient(self, d_L_d_out):
        """dL/dtotals through the softmax Jacobian: only the label's entry i of d_L_d_out is nonzero, and
        d out_i / d totals = p_i (onehot_i - p), the tutorial's e^t_i (S [i = k] - e^t_k) / S^2 in probabilities."""
        p = self.last_probs
        (nonzero,) = np.nonzero(d_L_d_out)
        i = nonzero[0]
        d_out_d_t = -p[i] * p
        d_out_d_t[i] = p[i] * (1 - p[i])
        return d_L_d_out[i] * d_out_d_t

    def backprop(self, d_L_d_out, learn_rate):
        """Update weights and biases; return dL/d(input), computed with the weights *before* the update."""
        d_L_d_t = self.totals_gradient(d_L_d_out)

        d_L_d_w = self.last_input[np.newaxis].T @ d_L_d_t[np.newaxis]  # (input_len, nodes)
        d_L_d_b = d_L_d_t
        d_L_d_inputs = self.weights @ d_L_d_t

        self.weights -= learn_rate * d_L_d_w
        self.biases -= learn_rate * d_L_d_b
        return d_L_d_inputs.reshape(self.last_input_shape)
