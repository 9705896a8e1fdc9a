# The tutorial's network with everything renamed, as published code often has it: no class, method or attribute
# is called as in the tutorial, the dense weights are (out, in) and the bias a column. Correct otherwise
# (first-max pooling, a shifted softmax, the conv returns its input gradient).
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class ConvLayer:
    def __init__(self, n_kernels):
        self.n_kernels = n_kernels
        self.kernels = np.random.randn(n_kernels, 3, 3) / 9

    def patches(self, image):
        for i in range(image.shape[0] - 2):
            for j in range(image.shape[1] - 2):
                yield image[i : i + 3, j : j + 3], i, j

    def feed(self, image):
        self.image = image
        return np.einsum("ijkl,fkl->ijf", sliding_window_view(image, (3, 3)), self.kernels)

    def back_prop(self, grad, lr):
        d_kernels = np.einsum("ijf,ijkl->fkl", grad, sliding_window_view(self.image, (3, 3)))
        d_image = np.zeros(self.image.shape)
        h, w, _ = grad.shape
        for k in range(3):
            for l in range(3):
                d_image[k : k + h, l : l + w] += grad @ self.kernels[:, k, l]
        self.kernels -= lr * d_kernels
        return d_image


class Pooling:
    def blocks(self, x):
        h, w, c = x.shape
        return x[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c).transpose(0, 2, 4, 1, 3)

    def feed(self, x):
        self.x = x
        return self.blocks(x).reshape(*self.blocks(x).shape[:3], 4).max(axis=-1)

    def back_prop(self, grad):
        h, w, c = self.x.shape
        flat = self.blocks(self.x).reshape(h // 2, w // 2, c, 4)
        routed = np.zeros(flat.shape)
        np.put_along_axis(routed, flat.argmax(axis=-1)[..., None], grad[..., None], axis=-1)
        d_x = np.zeros(self.x.shape)
        d_x[: h // 2 * 2, : w // 2 * 2] = (
            routed.reshape(h // 2, w // 2, c, 2, 2).transpose(0, 3, 1, 4, 2).reshape(h // 2 * 2, w // 2 * 2, c)
        )
        return d_x


class Dense:
    def __init__(self, n_in, n_out):
        self.W = np.random.randn(n_out, n_in) / n_in
        self.b = np.zeros((n_out, 1))

    def feed(self, x):
        self.shape = x.shape
        self.x = x.flatten()
        self.z = self.W @ self.x + self.b[:, 0]
        e = np.exp(self.z - self.z.max())
        self.p = e / e.sum()
        return self.p

    def back_prop(self, grad, lr):
        i = int(np.nonzero(grad)[0][0])
        d_z = grad[i] * self.p[i] * ((np.arange(len(self.p)) == i) - self.p)
        d_x = self.W.T @ d_z
        self.W -= lr * np.outer(d_z, self.x)
        self.b -= lr * d_z[:, None]
        return d_x.reshape(self.shape)
