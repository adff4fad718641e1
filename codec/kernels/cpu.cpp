// CPU kernels for the streaming hot path at float32 (codec/kernels/__init__.py builds and loads this file).
//
// duplex_cpu::ring_attention(q, k, v, mask) -> out
//   softmax(q k^T / sqrt(d) + mask) v for a few query rows against a long KV ring: q [B, H, R, d], k and v
//   [B, H, L, d] (any strides with a unit stride on d), mask [B, 1, R or 1, L] additive (0 / -inf), out [B, H, R, d].
//   PyTorch's route (two batched products around a softmax, codec.modules.transformer.ring_attention_cpu) reads the
//   ring at 31-38 GB/s on the 2-vCPU EPYC where this loop reads it at 43-50 (docs/benchmarks.md, "Own CPU
//   kernels"): one pass over the keys, one over the values, for all R rows, the scores kept in the core's cache.
//   duplex calls it for one row per head (codec/modules/transformer.py says why).
//
// Exactness: every sum runs in the order of the ring slots (the dot products over d are vectorised the same way
// for every slot), and a masked slot adds exactly 0 to the softmax's sum and to the output; so attending the first
// L slots and attending the whole ring with the slots past L masked give the same bits
// (tests/runtime/test_ring_length.py). Against PyTorch's kernels the values differ in the last bits (another
// order of sums and another exp), as any two CPU kernels do.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// Eight floats as one value (GCC/Clang vector extension: AVX registers where the CPU has them, pairs of SSE
// registers otherwise); aligned(4): loads from any float address; may_alias: read through float pointers.
typedef float f8 __attribute__((vector_size(32), aligned(4), may_alias));

// sum(a[i] * b[i]) with four independent accumulators (a single one waits on each multiply-add's latency), the
// lanes added in a fixed order, then the tail: the same order for the same n, whatever the data.
inline float dot(const float* a, const float* b, int64_t n) {
  f8 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 += *reinterpret_cast<const f8*>(a + i) * *reinterpret_cast<const f8*>(b + i);
    s1 += *reinterpret_cast<const f8*>(a + i + 8) * *reinterpret_cast<const f8*>(b + i + 8);
    s2 += *reinterpret_cast<const f8*>(a + i + 16) * *reinterpret_cast<const f8*>(b + i + 16);
    s3 += *reinterpret_cast<const f8*>(a + i + 24) * *reinterpret_cast<const f8*>(b + i + 24);
  }
  for (; i + 8 <= n; i += 8) s0 += *reinterpret_cast<const f8*>(a + i) * *reinterpret_cast<const f8*>(b + i);
  const f8 s = (s0 + s1) + (s2 + s3);
  float total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; i < n; ++i) total += a[i] * b[i];
  return total;
}

// y[i] += a * x[i] for i < n (the same operations for every i of the vector part).
inline void axpy(float* y, float a, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) *reinterpret_cast<f8*>(y + i) += a * *reinterpret_cast<const f8*>(x + i);
  for (; i < n; ++i) y[i] += a * x[i];
}

at::Tensor ring_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && mask.dim() == 4, "ring_attention: 4-d tensors expected");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat &&
                  mask.scalar_type() == at::kFloat,
              "ring_attention: float32 tensors expected");
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu() && mask.device().is_cpu(),
              "ring_attention: CPU tensors expected");
  const int64_t B = q.size(0), H = q.size(1), R = q.size(2), d = q.size(3), L = k.size(2);
  TORCH_CHECK(k.size(0) == B && v.size(0) == B && k.size(1) == H && v.size(1) == H && v.size(2) == L &&
                  k.size(3) == d && v.size(3) == d,
              "ring_attention: q [B, H, R, d], k and v [B, H, L, d] expected");
  TORCH_CHECK(mask.size(0) == B && mask.size(1) == 1 && (mask.size(2) == R || mask.size(2) == 1) && mask.size(3) == L,
              "ring_attention: mask [B, 1, R or 1, L] expected");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1 && mask.stride(3) == 1,
              "ring_attention: unit stride on the last dimension expected");
  at::Tensor out = at::empty({B, H, R, d}, q.options());
  if (L == 0 || out.numel() == 0) {
    return out.zero_();  // no slot: PyTorch's route gives the empty product, zeros
  }
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const float* mp = mask.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  // Strides as plain numbers: read through the tensors inside the loops they would be calls per slot.
  const int64_t mask_row_stride = mask.size(2) == 1 ? 0 : mask.stride(2), mask_batch_stride = mask.stride(0);
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1), qs2 = q.stride(2);
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2);
  // One (row of the batch, head) per task: its keys and values are one contiguous stretch of the ring each, read
  // once for all R query rows (each key and each value is used by every row while it is in the core's cache).
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    // R x L scores, then R maxima and R sums: grows once per thread, then is reused (nothing allocated per step).
    thread_local std::vector<float> buffer;
    if (static_cast<int64_t>(buffer.size()) < R * (L + 2)) buffer.resize(R * (L + 2));
    float* scores = buffer.data();
    float* top = scores + R * L;
    float* total = top + R;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const float* K = kp + b * ks0 + h * ks1;
      const float* V = vp + b * vs0 + h * vs1;
      const float* Q = qp + b * qs0 + h * qs1;
      const float* M = mp + b * mask_batch_stride;
      std::fill(top, top + R, -std::numeric_limits<float>::infinity());
      for (int64_t j = 0; j < L; ++j) {
        const float* kj = K + j * ks2;
        for (int64_t r = 0; r < R; ++r) {
          const float s = dot(Q + r * qs2, kj, d) * scale + M[r * mask_row_stride + j];
          scores[r * L + j] = s;
          top[r] = s > top[r] ? s : top[r];
        }
      }
      for (int64_t r = 0; r < R; ++r) {
        float sum = 0.0f;
        float* row = scores + r * L;
        for (int64_t j = 0; j < L; ++j) {  // in slot order: a masked slot adds exp(-inf) = 0
          const float e = std::exp(row[j] - top[r]);
          row[j] = e;
          sum += e;
        }
        total[r] = sum;
      }
      float* O = op + (b * H + h) * R * d;
      for (int64_t i = 0; i < R * d; ++i) O[i] = 0.0f;
      for (int64_t j = 0; j < L; ++j) {
        const float* vj = V + j * vs2;
        for (int64_t r = 0; r < R; ++r) axpy(O + r * d, scores[r * L + j], vj, d);
      }
      for (int64_t r = 0; r < R; ++r) {
        const float inv = 1.0f / total[r];  // all slots masked: exp(-inf - -inf) = NaN, as PyTorch's softmax gives
        for (int64_t i = 0; i < d; ++i) O[r * d + i] *= inv;
      }
    }
  });
  return out;
}


// duplex_cpu::gemv(x, weight) -> y
//   y = x @ weight.T for one row x [..., in] and a row-major weight [out, in] (rows may be strided: a slice of a
//   packed matrix), float32: a dot product per output, the outputs split between the threads. At batch 1 each of
//   a step's ~100 products reads its weight once; oneDNN takes 13-17 us for a 512 x 512 matrix in cache where this
//   loop takes 7; in the LM step at batch 1 the temporal stage and the depth stage each come out about 1 ms faster
//   (docs/benchmarks.md, "Own CPU kernels").
at::Tensor gemv(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight.size(1) && x.numel() == weight.size(1),
              "gemv: one row x [..., in] and weight [out, in] expected");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat, "gemv: float32 expected");
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "gemv: CPU tensors expected");
  TORCH_CHECK(x.stride(-1) == 1 && weight.stride(1) == 1, "gemv: a contiguous row and a row-major weight expected");
  const int64_t out = weight.size(0), in = weight.size(1), ld = weight.stride(0);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  at::Tensor y = at::empty(shape, x.options());
  const float* xp = x.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // Blocks of at least 64 outputs per thread: a thread's start costs more than a few rows' products.
  at::parallel_for(0, out, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) yp[r] = dot(w + r * ld, xp, in);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(duplex_cpu, m) {
  m.def("ring_attention(Tensor q, Tensor k, Tensor v, Tensor mask) -> Tensor");
  m.def("gemv(Tensor x, Tensor weight) -> Tensor");
}

TORCH_LIBRARY_IMPL(duplex_cpu, CPU, m) {
  m.impl("ring_attention", &ring_attention);
  m.impl("gemv", &gemv);
}
