// Q8_0 matrix x a few activation rows on AVX-512 VNNI: the output head of int4 / int8 decode.
//
// Built and loaded by engine/quant/native.py (g++ or clang++, OpenMP from the process's own
// libgomp, the one torch already runs on). Plain C ABI: the caller passes contiguous buffers.
//
//   w   int8  (N, G, 32)  the file's Q8_0 codes, one output's G = K / 32 blocks after another
//   ws  f32   (N, G)      their block scales
//   x   f32   (M, K)      activations
//   out f32   (M, N)      out[m, n] = sum_g ws[n, g] * dx[m, g] * <qx[m, g], w[n, g]>
//
// where each 32-wide block of x is quantized here to int16, qx = round(x / dx), dx = max|x| / 32767
// (|error| <= max|x| / 65534 per block: as fine as two int8 terms, finer than bf16).
//
// Why by hand, and why this layout: torch has no Q8_0 kernel; the head through 18 per-block
// `_int_mm` calls and their float passes read the 28 MB table at ~16 GB/s. Here each output's
// blocks are contiguous, so the table is one sequential stream that the prefetchers keep ahead
// of (measured 61 GB/s on 2 cores against 18-26 GB/s for the same kernel over block-major rows,
// whose 18 interleaved streams they did not follow). Per block: one widening load (int8 -> int16),
// one vpdpwssd (exact int32 pair sums), then float scaling into 16 lanes that are added once per
// output at the end.

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int kBlock = 32;
constexpr float kInt16Max = 32767.0f;
constexpr int kMaxRowsPerPass = 8;     // accumulators stay in registers up to this many rows
constexpr int64_t kOutputsPerTask = 128;  // ~74 KB of weight per task at K = 576, reused across row chunks

struct Block16 {
  alignas(64) int16_t q[kBlock];
};

// Outputs [n0, n1) for activation rows [m0, m0 + R).
template <int R>
void outputs(const int8_t* w, const float* ws, const Block16* qx, const float* dx, float* out, int64_t N, int64_t G,
             int64_t m0, int64_t n0, int64_t n1) {
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t n = n0; n < n1; ++n) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    const int8_t* row = w + n * G * kBlock;
    for (int64_t g = 0; g < G; ++g) {
      const __m512i w16 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + g * kBlock)));
      const __m512 scale = _mm512_set1_ps(ws[n * G + g]);
      for (int r = 0; r < R; ++r) {
        const int64_t b = (m0 + r) * G + g;
        const __m512i dot = _mm512_dpwssd_epi32(zero, w16, _mm512_load_si512(qx[b].q));
        acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(dx[b])), scale, acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) out[(m0 + r) * N + n] = _mm512_reduce_add_ps(acc[r]);
  }
}

using OutputsFn = void (*)(const int8_t*, const float*, const Block16*, const float*, float*, int64_t, int64_t,
                           int64_t, int64_t, int64_t);
constexpr OutputsFn kOutputs[kMaxRowsPerPass + 1] = {nullptr,    outputs<1>, outputs<2>, outputs<3>, outputs<4>,
                                                     outputs<5>, outputs<6>, outputs<7>, outputs<8>};

}  // namespace

extern "C" {

// The ABI version: native.py refuses a library that answers anything else.
int preflight_q8_0_abi() { return 2; }

// 0 on success; 2 for a non-positive size or thread count; 3 when x holds an inf or NaN (the caller then
// takes torch's kernel, which carries them into the output as float arithmetic does).
int preflight_q8_0_matmul(const int8_t* w, const float* ws, const float* x, float* out, int64_t M, int64_t N,
                          int64_t G, int threads) {
  if (M <= 0 || N <= 0 || G <= 0 || threads <= 0) return 2;
  std::vector<Block16> qx(static_cast<size_t>(M * G));
  std::vector<float> dx(static_cast<size_t>(M * G));
  for (int64_t b = 0; b < M * G; ++b) {
    const float* v = x + b * kBlock;
    float amax = 0.0f;
    for (int k = 0; k < kBlock; ++k) {
      if (!std::isfinite(v[k])) return 3;
      amax = std::fmax(amax, std::fabs(v[k]));
    }
    const float d = amax / kInt16Max;
    for (int k = 0; k < kBlock; ++k) qx[b].q[k] = d > 0.0f ? static_cast<int16_t>(std::nearbyint(v[k] / d)) : 0;
    dx[b] = d;
  }
  const int64_t tasks = (N + kOutputsPerTask - 1) / kOutputsPerTask;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t n0 = task * kOutputsPerTask;
    const int64_t n1 = n0 + kOutputsPerTask < N ? n0 + kOutputsPerTask : N;
    for (int64_t m0 = 0; m0 < M; m0 += kMaxRowsPerPass) {
      const int64_t rows = M - m0 < kMaxRowsPerPass ? M - m0 : kMaxRowsPerPass;
      kOutputs[rows](w, ws, qx.data(), dx.data(), out, N, G, m0, n0, n1);
    }
  }
  return 0;
}

}  // extern "C"
