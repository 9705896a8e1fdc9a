# How a person trains the layers in layers.py (never imported by cnn-parity: it reads which layers are built, in
# what order, from this file's source, and suggests them as --layers when asked to check this folder).
import numpy as np
from layers import ConvDeep, ConvFirst, MaxPool2, ReLU, Softmax


class Model:
    def __init__(self):
        self.layers = [
            ConvFirst(8),  # 28x28 -> 24x24x8
            ReLU(),
            MaxPool2(),  # -> 12x12x8
            ConvDeep(16, 8),  # -> 8x8x16
            ReLU(),
            MaxPool2(),  # -> 4x4x16
            Softmax(4 * 4 * 16, 10),  # -> 10
        ]

    def train_step(self, image, label, lr=0.005):
        out = image / 255 - 0.5
        for layer in self.layers:
            out = layer.forward(out)
        loss = -np.log(out[label])
        gradient = np.zeros(10)
        gradient[label] = -1 / out[label]
        for layer in reversed(self.layers):
            takes_lr = isinstance(layer, (ConvFirst, ConvDeep, Softmax))
            gradient = layer.backprop(gradient, lr) if takes_lr else layer.backprop(gradient)
        return loss
