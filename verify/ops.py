"""Bound rules, one small class per operator.

Each op maps a batch (B, *in_shape) to (B, *out_shape) and carries three rules:
  forward(x)             the concrete function,
  ibp(l, u)              interval bounds (sound for every x with l <= x <= u),
  backward(A)            pulls linear functions A (B, S, *out_shape) of the op's output back
                         to its input: returns (A', c) with A·op(x) = A'·x + c (affine ops only).
ReLU is the one nonlinear op: instead of backward it has lines(l, u), CROWN's two linear
bounds per neuron given its input bounds (verify.bounds pulls A through them).
Affine ops also carry what verify.rounding needs to bound a float32 runtime's error:
  magnitude(h)           |op|(h) for h >= 0: |weights|·h + |constants|, the sum of the
                         magnitudes of every term the runtime adds up;
  roundings              how many float roundings an output accumulates (0: exact op).
Everything is plain torch, so bounds are differentiable and run on CPU or CUDA.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def _mid_rad(l, u):
    return (u + l) / 2, (u - l) / 2


def _bias_magnitude(bias, given):
    return given if given is not None else (None if bias is None else bias.abs())


class Linear:
    """bias_magnitude: |terms| that were summed into the bias when ops were fused (a Gemm
    followed by Mul and Add), so the rounding of the unfused runtime stays bounded."""

    def __init__(self, weight, bias=None, bias_magnitude=None):
        self.weight, self.bias = weight, bias
        self.bias_magnitude = _bias_magnitude(bias, bias_magnitude)

    @property
    def roundings(self):  # n products and sums, the bias, two fused elementwise ops, folded weights
        return self.weight.shape[1] + 4

    def magnitude(self, h):
        return F.linear(h, self.weight.abs(), self.bias_magnitude)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def ibp(self, l, u):
        mid, rad = _mid_rad(l, u)
        c, r = F.linear(mid, self.weight, self.bias), F.linear(rad, self.weight.abs())
        return c - r, c + r

    def backward(self, A):
        const = A @ self.bias if self.bias is not None else A.new_zeros(A.shape[:2])
        return A @ self.weight, const


class Conv2d:
    def __init__(self, weight, bias, stride, padding, in_shape, bias_magnitude=None):
        self.weight, self.bias = weight, bias
        self.stride, self.padding, self.in_shape = stride, padding, tuple(in_shape)
        self.bias_magnitude = _bias_magnitude(bias, bias_magnitude)

    @property
    def roundings(self):
        return self.weight[0].numel() + 4

    def magnitude(self, h):
        return F.conv2d(h, self.weight.abs(), self.bias_magnitude, self.stride, self.padding)

    def _sparse_adjoint(self, A):
        """The cached sparse adjoint for A's map size, where it applies: CPU, no gradients."""
        if A.device.type != "cpu" or torch.is_grad_enabled() or not A.is_floating_point():
            return None
        cache = self.__dict__.setdefault("_sparse_adjoints", {})
        key = (tuple(A.shape[-2:]), A.dtype)
        if key not in cache or cache[key][0] is not self.weight:  # copies of an op share the dict
            cache[key] = (self.weight, _sparse_adjoint(self, A.shape[-2:], A.dtype, A.device))
        return cache[key][1]

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def ibp(self, l, u):
        mid, rad = _mid_rad(l, u)
        c = self.forward(mid)
        r = F.conv2d(rad, self.weight.abs(), None, self.stride, self.padding)
        return c - r, c + r

    def backward(self, A):
        B, S, C, H, W = A.shape
        adjoint = self._sparse_adjoint(A)
        if adjoint is not None:  # (in, out) @ (out, rows): the nonzero weights' terms only
            A_in = (adjoint @ A.reshape(B * S, -1).T).T
        else:
            A_in = _conv_transpose(A.reshape(B * S, C, H, W), self.weight, self.stride,
                                   self.padding, self.in_shape)
        if self.bias is None:
            const = A.new_zeros(B, S)
        else:
            const = torch.einsum("bschw,c->bs", A, self.bias)
        return A_in.reshape(B, S, *self.in_shape), const


# the sparse adjoint's size cap, in stored weights (about 20 bytes each)
MAX_SPARSE_ADJOINT = 4_000_000


def _sparse_adjoint(op, out_hw, dtype, device):
    """The conv's adjoint as a CSR matrix (input size x output size) of its nonzero weights
    at every output position: on the CPU, many rows through a small conv cost a sparse
    matrix product, 2-4x less than conv_transpose2d (more where the weights are sparse).
    None where it would exceed MAX_SPARSE_ADJOINT entries."""
    if int((op.weight != 0).sum()) * out_hw[0] * out_hw[1] > MAX_SPARSE_ADJOINT:
        return None
    rows, cols, vals, size = conv_entries(op, out_hw, dtype, device)
    with warnings.catch_warnings():  # torch calls its sparse CSR support beta; products are all we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, size).coalesce().to_sparse_csr()


def conv_entries(op, out_hw, dtype, device):
    """The conv's nonzero weights at every output position, as adjoint entries: (input index,
    output index, weight) tensors and the adjoint's size (input size, output size)."""
    w = op.weight.detach().to(dtype=dtype, device=device)
    co, ci, kh, kw = w.nonzero(as_tuple=True)
    (Ho, Wo), (_, Hi, Wi) = out_hw, op.in_shape
    (sh, sw), (ph, pw) = ((s, s) if isinstance(s, int) else tuple(s) for s in (op.stride, op.padding))
    oh = torch.arange(Ho, device=device).repeat_interleave(Wo)[:, None]
    ow = torch.arange(Wo, device=device).repeat(Ho)[:, None]
    ih, iw = oh * sh - ph + kh, ow * sw - pw + kw  # (positions, weights)
    ok = (ih >= 0) & (ih < Hi) & (iw >= 0) & (iw < Wi)
    rows = (ci * Hi * Wi + ih * Wi + iw)[ok]
    cols = (co * Ho * Wo + oh * Wo + ow)[ok]
    vals = w[co, ci, kh, kw].expand(ok.shape)[ok]
    return rows, cols, vals, (op.in_shape[0] * Hi * Wi, op.weight.shape[0] * Ho * Wo)


def _conv_transpose(A, weight, stride, padding, in_shape, groups=1):
    """The adjoint of conv2d, sized back to the conv's input (output_padding fixes strides)."""
    kh, kw = weight.shape[-2:]
    H, W = A.shape[-2:]
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    out_pad = (in_shape[1] - ((H - 1) * sh - 2 * ph + kh), in_shape[2] - ((W - 1) * sw - 2 * pw + kw))
    return F.conv_transpose2d(A, weight, None, (sh, sw), (ph, pw), out_pad, groups)


class ChannelAffine:
    """y = x * scale[c] + shift[c]: eval-mode BatchNorm and input normalisation.
    shift_magnitude: |beta| + |mean·scale| for a BatchNorm, whose runtime subtracts the mean
    first (a cancellation the folded shift hides)."""

    roundings = 6  # BatchNorm's (x - mean) / sqrt(var + eps) * gamma + beta, or a fused pair

    def __init__(self, scale, shift, shift_magnitude=None):
        self.scale, self.shift = scale, shift
        self.shift_magnitude = _bias_magnitude(shift, shift_magnitude)

    def magnitude(self, h):
        return h * self._view(self.scale.abs(), h.dim()) + self._view(self.shift_magnitude, h.dim())

    def _view(self, t, ndim):
        return t.view(-1, *([1] * (ndim - 2))) if ndim > 2 else t

    def forward(self, x):
        return x * self._view(self.scale, x.dim()) + self._view(self.shift, x.dim())

    def ibp(self, l, u):
        mid, rad = _mid_rad(l, u)
        c = self.forward(mid)
        r = rad * self._view(self.scale.abs(), rad.dim())
        return c - r, c + r

    def backward(self, A):
        # A: (B, S, C, ...) — channel axis is 2.
        view = (-1,) + (1,) * (A.dim() - 3)
        const = (A * self.shift.view(view)).flatten(2).sum(-1)
        return A * self.scale.view(view), const


class ElementwiseAffine:
    """y = x * scale + shift with scale, shift of the per-sample shape (broadcast where
    smaller): Add/Sub/Mul/Div by constants in imported graphs."""

    roundings = 6

    def __init__(self, scale, shift, shift_magnitude=None):
        self.scale, self.shift = scale, shift
        self.shift_magnitude = _bias_magnitude(shift, shift_magnitude)

    def magnitude(self, h):
        return h * self.scale.abs() + self.shift_magnitude

    def forward(self, x):
        return x * self.scale + self.shift

    def ibp(self, l, u):
        mid, rad = _mid_rad(l, u)
        c = self.forward(mid)
        return c - rad * self.scale.abs(), c + rad * self.scale.abs()

    def backward(self, A):
        const = (A * self.shift).flatten(2).sum(-1)
        return A * self.scale, const


class BatchNorm(ChannelAffine):
    """BatchNorm whose scale/shift come from the batch in training mode (as torch's does).

    In training, forward() on the clean batch fixes the statistics that the bound rules then
    use for the same batch, and updates the running averages."""

    def __init__(self, module):
        self.module = module
        scale, shift = self._affine(module.running_mean, module.running_var)
        super().__init__(scale, shift, (module.bias.abs() + (module.running_mean * scale).abs()).detach())

    def _affine(self, mean, var):
        m = self.module
        scale = m.weight / torch.sqrt(var + m.eps)
        return scale, m.bias - mean * scale

    def forward(self, x):
        if self.module.training:
            dims = [0] + list(range(2, x.dim()))
            mean, var = x.mean(dims), x.var(dims, unbiased=False)
            self.scale, self.shift = self._affine(mean, var)
            with torch.no_grad():
                m, n = self.module, x.numel() / x.shape[1]
                m.num_batches_tracked += 1
                m.running_mean.mul_(1 - m.momentum).add_(m.momentum * mean.detach())
                m.running_var.mul_(1 - m.momentum).add_(m.momentum * var.detach() * n / max(n - 1, 1))
        return super().forward(x)


class AvgPool2d:
    def __init__(self, kernel, stride, padding, channels, in_shape):
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.in_shape = tuple(in_shape)
        k = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.weight = torch.full((channels, 1, *k), 1.0 / (k[0] * k[1]))
        self.roundings = k[0] * k[1] + 2

    def magnitude(self, h):
        return self.forward(h)

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True)

    def ibp(self, l, u):
        return self.forward(l), self.forward(u)  # positive weights: monotone

    def backward(self, A):
        B, S, C, H, W = A.shape
        w = self.weight.to(A)
        A_in = _conv_transpose(A.reshape(B * S, C, H, W), w, self.stride, self.padding,
                               self.in_shape, groups=C)
        return A_in.reshape(B, S, *self.in_shape), A.new_zeros(B, S)


class Flatten:
    roundings = 0

    def __init__(self, in_shape):
        self.in_shape = tuple(in_shape)

    def forward(self, x):
        return x.flatten(1)

    def ibp(self, l, u):
        return l.flatten(1), u.flatten(1)

    def backward(self, A):
        return A.reshape(*A.shape[:2], *self.in_shape), A.new_zeros(A.shape[:2])


class Reshape:
    """Per-sample reshape (ONNX Reshape that keeps the batch axis); Flatten is the common case."""

    roundings = 0

    def __init__(self, in_shape, out_shape):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.out_shape)

    def ibp(self, l, u):
        return self.forward(l), self.forward(u)

    def backward(self, A):
        return A.reshape(*A.shape[:2], *self.in_shape), A.new_zeros(A.shape[:2])


class ReLU:
    def forward(self, x):
        return F.relu(x)

    def ibp(self, l, u):
        return F.relu(l), F.relu(u)

    @staticmethod
    def unstable(l, u):
        """Where the relaxation is loose, so tighter input bounds would help."""
        return (l < 0) & (u > 0)

    @staticmethod
    def lines(l, u):
        """CROWN's relaxation: lo_s·x + lo_c <= relu(x) <= up_s·x + up_c per neuron (lo_c = 0,
        given as None so that backward passes skip it).

        Unstable neurons (l < 0 < u) get the chord u/(u-l) above and the adaptive slope
        (1 where u >= -l, else 0) below; stable ones are exact."""
        active, inactive = l >= 0, u <= 0
        unstable = ~(active | inactive)
        denom = torch.where(unstable, u - l, torch.ones_like(u))
        up_slope = torch.where(unstable, u / denom, active.to(u.dtype))
        up_icpt = torch.where(unstable, -l * u / denom, torch.zeros_like(u))
        lo_slope = torch.where(unstable, (u >= -l).to(u.dtype), active.to(u.dtype))
        return lo_slope, None, up_slope, up_icpt  # None: the lower lines pass through 0
