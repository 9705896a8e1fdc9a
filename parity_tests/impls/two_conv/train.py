# The training script: it builds the network in Net.__init__ and trains when run, so the checker must never
# import it (it reads the layer sequence from the source instead).
import numpy as np
from conv import ConvA, ConvB
from maxpool import MaxPool2
from softmax import Softmax

FILTERS = 4


class Net:
    def __init__(self):
        self.conv1 = ConvA(FILTERS)  # 28x28 -> 24x24x4
        self.pool1 = MaxPool2()  # -> 12x12x4
        self.conv2 = ConvB(6, FILTERS)  # -> 8x8x6
        self.pool2 = MaxPool2()  # -> 4x4x6
        self.softmax = Softmax(4 * 4 * 6, 10)


raise SystemExit(f"training {Net()} on {np.__name__}: the checker must not import this script")
