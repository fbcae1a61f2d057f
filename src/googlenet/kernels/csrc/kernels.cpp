// CPU training kernels that ATen lacks, for channels_last (NHWC) tensors in float32, bfloat16 and float64.
//
// 1. Max-pooling that remembers each maximum's position inside its window in one byte (uint8) instead of
//    an int64 offset into the whole plane: 1 byte per output element instead of 8. An optional ReLU is
//    applied to the pooled value (ReLU and max-pooling commute; see googlenet/speedups.py), its mask kept in
//    the same byte (255 = zeroed by the ReLU). The backward pass gathers: each input element sums the
//    gradients of the windows that chose it, so no zero-filled gradient and no scattered writes.
// 2. Training-mode BatchNorm with the ReLU after it, in one forward pass over the output and one pair of
//    passes backward, where ATen makes separate passes for BatchNorm and for ReLU.
//
// Arithmetic follows ATen's CPU kernels: float accumulation for float32 and bfloat16 (double for float64),
// the two-pass mean and variance, the unbiased variance in the running estimate, first-maximum tie-breaking
// and NaN propagation in max-pooling. Reductions are split into a fixed number of slices per thread count,
// so a run repeats bit for bit with the same number of threads.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

constexpr uint8_t kReluZeroed = 255;  // in-window index meaning "the ReLU zeroed this output"

// Branch-free conversions the compiler vectorizes (c10's bfloat16 rounding branches on NaN); the rounding is
// c10's: to nearest, ties to even, NaN to the quiet NaN 0x7FC0.
template <typename T, typename A>
inline A load(T v) {
  return static_cast<A>(v);
}
template <>
inline float load<c10::BFloat16, float>(c10::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
template <typename T, typename A>
inline T store(A v) {
  return static_cast<T>(v);
}
template <>
inline c10::BFloat16 store<c10::BFloat16, float>(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const bool nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
  return c10::BFloat16(static_cast<uint16_t>(nan ? 0x7FC0u : rounded), c10::BFloat16::from_bits());
}

void check_nhwc(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D (N, C, H, W), got ", t.dim(), "-D");
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast), name, " must be channels_last contiguous");
}

// ATen's pooling_output_shape for dilation 1.
int64_t pooled_size(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode) {
  int64_t numerator = in + 2 * p - k + (ceil_mode ? s - 1 : 0);
  TORCH_CHECK(numerator >= 0, "max-pool window of ", k, " does not fit an input of ", in, " with padding ", p);
  int64_t out = numerator / s + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;  // the last window must start inside the input
  return out;
}

// Rows [begin, end) of slice t when `rows` rows are cut into `slices` nearly equal parts.
inline int64_t slice_start(int64_t rows, int64_t slices, int64_t t) { return rows * t / slices; }

// Max-pooling works on one output pixel (forward) or input pixel (backward) at a time: each thread keeps a
// buffer of C running maxima and arguments (or C gradient sums), which stays in L1, and streams every window
// pixel's C channels past it. The loops over channels are long and unit-stride, so they vectorize; blocks of
// 32 channels in fixed-size arrays measured 13-30% slower (2 vCPUs, bf16, the 64-px presets' shapes).

template <typename scalar_t>
void max_pool_forward_impl(const at::Tensor& x, at::Tensor& out, at::Tensor& idx, int64_t kH, int64_t kW,
                           int64_t sH, int64_t sW, int64_t pH, int64_t pW, bool relu) {
  using acc_t = typename Acc<scalar_t>::type;
  // The running argument is kept in lanes as wide as the running maximum's (one vector width for both) and
  // narrowed to a byte once per output.
  using arg_t = std::conditional_t<sizeof(acc_t) == 8, int64_t, int32_t>;
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t OH = out.size(2), OW = out.size(3), rows = out.size(0) * OH * OW;
  // Channels are innermost; pixels may lie further apart than C (a channel slice of a wider tensor).
  const int64_t n_stride = x.stride(0), h_stride = x.stride(2), w_stride = x.stride(3);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  uint8_t* ip = idx.data_ptr<uint8_t>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> best_v(C);
    std::vector<arg_t> arg_v(C);
    acc_t* __restrict__ best = best_v.data();
    arg_t* __restrict__ arg = arg_v.data();
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / (OH * OW), oh = (r / OW) % OH, ow = r % OW;
      const int64_t h0 = oh * sH - pH, w0 = ow * sW - pW;
      const int64_t hs = std::max<int64_t>(h0, 0), he = std::min(h0 + kH, H);
      const int64_t ws = std::max<int64_t>(w0, 0), we = std::min(w0 + kW, W);
      const scalar_t* pixel = xp + n * n_stride;
      bool first_pixel = true;  // no window is empty (2p <= k, checked by the caller): the first one fills the row
      for (int64_t h = hs; h < he; ++h) {
        for (int64_t w = ws; w < we; ++w) {
          const arg_t k = static_cast<arg_t>((h - h0) * kW + (w - w0));
          const scalar_t* __restrict__ in = pixel + h * h_stride + w * w_stride;
          if (first_pixel) {
            for (int64_t c = 0; c < C; ++c) {
              best[c] = load<scalar_t, acc_t>(in[c]);
              arg[c] = k;
            }
            first_pixel = false;
            continue;
          }
          for (int64_t c = 0; c < C; ++c) {
            const acc_t v = load<scalar_t, acc_t>(in[c]);
            const acc_t b = best[c];
            const bool take = (v > b) | (v != v);  // ATen: a larger value or a NaN takes the window
            best[c] = take ? v : b;
            arg[c] = take ? k : arg[c];
          }
        }
      }
      scalar_t* __restrict__ o = op + r * C;
      uint8_t* __restrict__ a = ip + r * C;
      for (int64_t c = 0; c < C; ++c) {
        const bool zeroed = relu && best[c] <= 0;  // ReLU's backward passes a gradient only where out > 0
        o[c] = store<scalar_t, acc_t>(zeroed ? acc_t(0) : best[c]);
        a[c] = static_cast<uint8_t>(zeroed ? arg_t(kReluZeroed) : arg[c]);
      }
    }
  });
}

template <typename scalar_t>
void max_pool_backward_impl(const at::Tensor& grad_out, const at::Tensor& idx, at::Tensor& grad_in, int64_t kH,
                            int64_t kW, int64_t sH, int64_t sW, int64_t pH, int64_t pW) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t C = grad_in.size(1), H = grad_in.size(2), W = grad_in.size(3);
  const int64_t OH = grad_out.size(2), OW = grad_out.size(3), rows = grad_in.size(0) * H * W;
  const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
  const uint8_t* ip = idx.const_data_ptr<uint8_t>();
  scalar_t* out = grad_in.data_ptr<scalar_t>();
  // The windows holding input row i start at o * s - p <= i < o * s - p + k.
  auto first_window = [](int64_t i, int64_t k, int64_t s, int64_t p) {
    const int64_t top = i + p - k + 1;
    return top <= 0 ? int64_t(0) : (top + s - 1) / s;
  };
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sum_v(C);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / (H * W), ih = (r / W) % H, iw = r % W;
      const int64_t oh_lo = first_window(ih, kH, sH, pH), oh_hi = std::min((ih + pH) / sH, OH - 1);
      const int64_t ow_lo = first_window(iw, kW, sW, pW), ow_hi = std::min((iw + pW) / sW, OW - 1);
      acc_t* __restrict__ sum = sum_v.data();
      for (int64_t c = 0; c < C; ++c) sum[c] = acc_t(0);
      for (int64_t oh = oh_lo; oh <= oh_hi; ++oh) {
        for (int64_t ow = ow_lo; ow <= ow_hi; ++ow) {
          const uint8_t k = static_cast<uint8_t>((ih + pH - oh * sH) * kW + (iw + pW - ow * sW));
          const int64_t o = ((n * OH + oh) * OW + ow) * C;
          const scalar_t* __restrict__ g = gp + o;
          const uint8_t* __restrict__ a = ip + o;
          for (int64_t c = 0; c < C; ++c) sum[c] += a[c] == k ? load<scalar_t, acc_t>(g[c]) : acc_t(0);
        }
      }
      scalar_t* __restrict__ gi = out + r * C;
      for (int64_t c = 0; c < C; ++c) gi[c] = store<scalar_t, acc_t>(sum[c]);
    }
  });
}

// Sums over the rows of an (rows, C) matrix of f(row, c), in `slices` fixed slices summed in order.
template <typename acc_t, typename F>
std::vector<acc_t> channel_sums(int64_t rows, int64_t C, int64_t slices, const F& f) {
  std::vector<acc_t> partial(slices * C, acc_t(0));
  at::parallel_for(0, slices, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      acc_t* p = partial.data() + t * C;
      for (int64_t r = slice_start(rows, slices, t); r < slice_start(rows, slices, t + 1); ++r) f(r, p);
    }
  });
  std::vector<acc_t> total(C, acc_t(0));
  for (int64_t t = 0; t < slices; ++t)
    for (int64_t c = 0; c < C; ++c) total[c] += partial[t * C + c];
  return total;
}

int64_t reduction_slices(int64_t rows) { return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows)); }

template <typename scalar_t, typename param_t>
std::vector<at::Tensor> bn_relu_forward_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                             at::Tensor& running_mean, at::Tensor& running_var, double momentum,
                                             double eps) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t C = x.size(1), rows = x.numel() / C, slices = reduction_slices(rows);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  std::vector<acc_t> mean = channel_sums<acc_t>(rows, C, slices, [&](int64_t r, acc_t* p) {
    const scalar_t* in = xp + r * C;
    for (int64_t c = 0; c < C; ++c) p[c] += load<scalar_t, acc_t>(in[c]);
  });
  for (auto& m : mean) m /= static_cast<acc_t>(rows);
  std::vector<acc_t> var = channel_sums<acc_t>(rows, C, slices, [&](int64_t r, acc_t* p) {
    const scalar_t* in = xp + r * C;
    const acc_t* m = mean.data();
    for (int64_t c = 0; c < C; ++c) {
      const acc_t d = load<scalar_t, acc_t>(in[c]) - m[c];
      p[c] += d * d;
    }
  });
  for (auto& v : var) v /= static_cast<acc_t>(rows);

  const auto stat_options = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor save_mean = at::empty({C}, stat_options), save_invstd = at::empty({C}, stat_options);
  acc_t* sm = save_mean.data_ptr<acc_t>();
  acc_t* si = save_invstd.data_ptr<acc_t>();
  std::vector<acc_t> scale(C), shift(C);
  const param_t* wp = weight.const_data_ptr<param_t>();
  const param_t* bp = bias.const_data_ptr<param_t>();
  param_t* rm = running_mean.data_ptr<param_t>();
  param_t* rv = running_var.data_ptr<param_t>();
  const acc_t unbias = static_cast<acc_t>(rows) / static_cast<acc_t>(rows - 1);
  for (int64_t c = 0; c < C; ++c) {
    const acc_t invstd = acc_t(1) / std::sqrt(var[c] + static_cast<acc_t>(eps));
    sm[c] = mean[c];
    si[c] = invstd;
    scale[c] = invstd * static_cast<acc_t>(wp[c]);
    shift[c] = static_cast<acc_t>(bp[c]) - mean[c] * scale[c];
    rm[c] = static_cast<param_t>(momentum * mean[c] + (1 - momentum) * rm[c]);
    rv[c] = static_cast<param_t>(momentum * var[c] * unbias + (1 - momentum) * rv[c]);
  }

  at::Tensor y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  scalar_t* yp = y.data_ptr<scalar_t>();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    const acc_t* a = scale.data();
    const acc_t* b = shift.data();
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* in = xp + r * C;
      scalar_t* o = yp + r * C;
      for (int64_t c = 0; c < C; ++c) {
        const acc_t v = load<scalar_t, acc_t>(in[c]) * a[c] + b[c];
        o[c] = store<scalar_t, acc_t>(v <= 0 ? acc_t(0) : v);  // ReLU; a NaN stays NaN, as in ATen
      }
    }
  });
  return {y, save_mean, save_invstd};
}

template <typename scalar_t, typename param_t>
std::vector<at::Tensor> bn_relu_backward_impl(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& y,
                                              const at::Tensor& weight, const at::Tensor& save_mean,
                                              const at::Tensor& save_invstd) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t C = x.size(1), rows = x.numel() / C, slices = reduction_slices(rows);
  const scalar_t* gp = grad_y.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* yp = y.const_data_ptr<scalar_t>();
  const acc_t* mean = save_mean.const_data_ptr<acc_t>();
  const acc_t* invstd = save_invstd.const_data_ptr<acc_t>();
  // The gradient reaching BatchNorm's output is the incoming one where the ReLU passed its input: ATen's ReLU
  // backward zeroes it where y <= 0, so a NaN output passes its gradient. Its
  // sum and its dot product with (x - mean) come from one pass: partial sums [0, C) and [C, 2C).
  std::vector<acc_t> sums = channel_sums<acc_t>(rows, 2 * C, slices, [&](int64_t r, acc_t* p) {
    const scalar_t* __restrict__ g = gp + r * C;
    const scalar_t* __restrict__ o = yp + r * C;
    const scalar_t* __restrict__ in = xp + r * C;
    acc_t* __restrict__ grad_part = p;
    acc_t* __restrict__ dot_part = p + C;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t gc = !(load<scalar_t, acc_t>(o[c]) <= 0) ? load<scalar_t, acc_t>(g[c]) : acc_t(0);
      grad_part[c] += gc;
      dot_part[c] += gc * (load<scalar_t, acc_t>(in[c]) - mean[c]);
    }
  });
  const acc_t* grad_sum = sums.data();
  const acc_t* dot = sums.data() + C;

  at::Tensor grad_weight = at::empty_like(weight), grad_bias = at::empty_like(weight);
  param_t* gw = grad_weight.data_ptr<param_t>();
  param_t* gb = grad_bias.data_ptr<param_t>();
  const param_t* wp = weight.const_data_ptr<param_t>();
  std::vector<acc_t> k(C), grad_mean(C), out_scale(C);
  const acc_t n = static_cast<acc_t>(rows);
  for (int64_t c = 0; c < C; ++c) {
    gw[c] = static_cast<param_t>(dot[c] * invstd[c]);
    gb[c] = static_cast<param_t>(grad_sum[c]);
    k[c] = dot[c] * invstd[c] * invstd[c] / n;
    grad_mean[c] = grad_sum[c] / n;
    out_scale[c] = invstd[c] * static_cast<acc_t>(wp[c]);
  }
  at::Tensor grad_x = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  scalar_t* dxp = grad_x.data_ptr<scalar_t>();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* g = gp + r * C;
      const scalar_t* o = yp + r * C;
      const scalar_t* in = xp + r * C;
      scalar_t* dx = dxp + r * C;
      for (int64_t c = 0; c < C; ++c) {
        const acc_t gc = !(load<scalar_t, acc_t>(o[c]) <= 0) ? load<scalar_t, acc_t>(g[c]) : acc_t(0);
        const acc_t xc = load<scalar_t, acc_t>(in[c]) - mean[c];
        dx[c] = store<scalar_t, acc_t>((gc - xc * k[c] - grad_mean[c]) * out_scale[c]);
      }
    }
  });
  return {grad_x, grad_weight, grad_bias};
}

std::vector<at::Tensor> max_pool_forward(const at::Tensor& x, int64_t kH, int64_t kW, int64_t sH, int64_t sW,
                                         int64_t pH, int64_t pW, bool ceil_mode, bool relu) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4, "input must be a 4-D CPU tensor");
  TORCH_CHECK(x.stride(1) == 1 || x.size(1) == 1, "input must keep its channels innermost (channels_last)");
  TORCH_CHECK(kH * kW < kReluZeroed, "max-pool window of ", kH, "x", kW, " is too large for one-byte indices");
  TORCH_CHECK(sH > 0 && sW > 0 && pH >= 0 && pW >= 0 && 2 * pH <= kH && 2 * pW <= kW, "invalid max-pool geometry");
  const int64_t OH = pooled_size(x.size(2), kH, sH, pH, ceil_mode);
  const int64_t OW = pooled_size(x.size(3), kW, sW, pW, ceil_mode);
  auto shape = std::vector<int64_t>{x.size(0), x.size(1), OH, OW};
  at::Tensor out = at::empty(shape, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor idx = at::empty(shape, x.options().dtype(at::kByte).memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "max_pool_forward", [&] {
    max_pool_forward_impl<scalar_t>(x, out, idx, kH, kW, sH, sW, pH, pW, relu);
  });
  return {out, idx};
}

at::Tensor max_pool_backward(const at::Tensor& grad_out, const at::Tensor& idx, int64_t H, int64_t W, int64_t kH,
                             int64_t kW, int64_t sH, int64_t sW, int64_t pH, int64_t pW) {
  check_nhwc(grad_out, "grad_output");
  check_nhwc(idx, "indices");
  TORCH_CHECK(idx.scalar_type() == at::kByte && idx.sizes() == grad_out.sizes(), "indices do not match the gradient");
  at::Tensor grad_in = at::empty({grad_out.size(0), grad_out.size(1), H, W},
                                 grad_out.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad_out.scalar_type(), "max_pool_backward", [&] {
    max_pool_backward_impl<scalar_t>(grad_out, idx, grad_in, kH, kW, sH, sW, pH, pW);
  });
  return grad_in;
}

void check_params(const at::Tensor& x, const at::Tensor& p, const char* name) {
  TORCH_CHECK(p.dim() == 1 && p.size(0) == x.size(1) && p.is_contiguous(), name, " must be a contiguous vector of ",
              x.size(1), " channels");
}

std::vector<at::Tensor> batch_norm_relu_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                                at::Tensor running_mean, at::Tensor running_var, double momentum,
                                                double eps) {
  check_nhwc(x, "input");
  TORCH_CHECK(x.numel() > x.size(1), "BatchNorm needs more than one value per channel");
  check_params(x, weight, "weight");
  check_params(x, bias, "bias");
  check_params(x, running_mean, "running_mean");
  check_params(x, running_var, "running_var");
  TORCH_CHECK(weight.scalar_type() == bias.scalar_type() && weight.scalar_type() == running_mean.scalar_type() &&
                  weight.scalar_type() == running_var.scalar_type(),
              "BatchNorm parameters and statistics must share one dtype");
  std::vector<at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "batch_norm_relu_forward", [&] {
    if (weight.scalar_type() == at::kDouble) {
      result = bn_relu_forward_impl<scalar_t, double>(x, weight, bias, running_mean, running_var, momentum, eps);
    } else {
      TORCH_CHECK(weight.scalar_type() == at::kFloat, "BatchNorm parameters must be float32 or float64");
      result = bn_relu_forward_impl<scalar_t, float>(x, weight, bias, running_mean, running_var, momentum, eps);
    }
  });
  return result;
}

std::vector<at::Tensor> batch_norm_relu_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& y,
                                                 const at::Tensor& weight, const at::Tensor& save_mean,
                                                 const at::Tensor& save_invstd) {
  check_nhwc(grad_y, "grad_output");
  check_nhwc(x, "input");
  check_nhwc(y, "output");
  check_params(x, weight, "weight");
  std::vector<at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "batch_norm_relu_backward", [&] {
    TORCH_CHECK(grad_y.scalar_type() == x.scalar_type() && y.scalar_type() == x.scalar_type(),
                "gradient, input and output must share one dtype");
    if (weight.scalar_type() == at::kDouble) {
      result = bn_relu_backward_impl<scalar_t, double>(grad_y, x, y, weight, save_mean, save_invstd);
    } else {
      result = bn_relu_backward_impl<scalar_t, float>(grad_y, x, y, weight, save_mean, save_invstd);
    }
  });
  return result;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "googlenet's CPU training kernels: compact-index max-pooling and fused BatchNorm + ReLU (channels_last)";
  m.def("max_pool_forward", &max_pool_forward, "max-pool forward: (output, uint8 in-window indices)");
  m.def("max_pool_backward", &max_pool_backward, "max-pool backward: the input gradient");
  m.def("batch_norm_relu_forward", &batch_norm_relu_forward,
        "training BatchNorm + ReLU forward: (output, batch mean, batch inverse std); updates running statistics");
  m.def("batch_norm_relu_backward", &batch_norm_relu_backward,
        "training BatchNorm + ReLU backward: (input gradient, weight gradient, bias gradient)");
}
