// Q8_0 matrix x few activation rows on AVX-512 VNNI: the output head of int4 / int8 decode.
//
// Built and loaded by engine/quant/native.py (g++ or clang++, OpenMP from the process's own
// libgomp, the one torch already runs on). Plain C ABI: the caller passes contiguous buffers.
//
// Inputs (G = K / 32 blocks of every row, group-major as engine/quant/linear.py's Q80Linear keeps them):
//   w   int8  (G, N, 32)  the file's Q8_0 codes
//   ws  f32   (G, N)      their block scales
//   xq  int8  (2M, K)     activations quantized per 32-wide block, the first term's M rows then
//                         the M rows of the second term (what the first left over)
//   dq  f32   (2M, G)     those terms' block scales
//   out f32   (M, N)      out[m, n] = sum_g ws[g, n] * (dq[m, g] * <xq[m, g], w[g, n]> +
//                                                      dq[M + m, g] * <xq[M + m, g], w[g, n]>)
//
// Why by hand: torch has no Q8_0 kernel, and the head through 18 per-block `_int_mm` calls plus their
// float scaling passes reads the 28 MB table at ~16 GB/s. Here one 64-byte load holds one block of
// two outputs; VNNI's vpdpbusd multiplies unsigned by signed bytes, so |w| goes in as the unsigned
// side and the activation takes w's sign. Each integer block sum is exact (<= 32 * 127 * 127); the
// sums are scaled and accumulated per lane in float32 and each output's 8 lanes are added once at
// the end, rather than once per block.

#include <immintrin.h>

#include <cstdint>
#include <vector>

namespace {

constexpr int kBlock = 32;
constexpr int kMaxRowsPerPass = 8;  // accumulators stay in registers up to this many rows
constexpr int64_t kPairsPerTask = 64;  // 128 outputs x G blocks: ~74 KB of weight per task, reused across row chunks

inline float sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Outputs 2p and 2p + 1 for p in [p0, p1), activation rows [m0, m0 + R).
template <int R>
void pairs(const int8_t* w, const float* ws, const __m512i* xpat, const float* dq, float* out, int64_t M,
           int64_t N, int64_t G, int64_t m0, int64_t p0, int64_t p1) {
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n = 2 * p;
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
      const __m512i wz = _mm512_loadu_si512(static_cast<const void*>(w + (g * N + n) * kBlock));
      const __m512i magnitude = _mm512_abs_epi8(wz);
      const __mmask64 negative = _mm512_movepi8_mask(wz);
      const __m512 scale = _mm512_mask_blend_ps(static_cast<__mmask16>(0xFF00), _mm512_set1_ps(ws[g * N + n]),
                                                _mm512_set1_ps(ws[g * N + n + 1]));
      for (int r = 0; r < R; ++r) {
        const int64_t first = (m0 + r) * G + g, second = (M + m0 + r) * G + g;
        const __m512i x1 = _mm512_mask_sub_epi8(xpat[first], negative, zero, xpat[first]);
        const __m512i x2 = _mm512_mask_sub_epi8(xpat[second], negative, zero, xpat[second]);
        const __m512 s1 = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, magnitude, x1));
        const __m512 s2 = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, magnitude, x2));
        const __m512 both = _mm512_fmadd_ps(s2, _mm512_set1_ps(dq[second]), _mm512_mul_ps(s1, _mm512_set1_ps(dq[first])));
        acc[r] = _mm512_fmadd_ps(both, scale, acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      out[(m0 + r) * N + n] = sum8(_mm512_castps512_ps256(acc[r]));
      out[(m0 + r) * N + n + 1] = sum8(_mm512_extractf32x8_ps(acc[r], 1));
    }
  }
}

using PairsFn = void (*)(const int8_t*, const float*, const __m512i*, const float*, float*, int64_t, int64_t, int64_t,
                         int64_t, int64_t, int64_t);
constexpr PairsFn kPairs[kMaxRowsPerPass + 1] = {nullptr,  pairs<1>, pairs<2>, pairs<3>, pairs<4>,
                                                 pairs<5>, pairs<6>, pairs<7>, pairs<8>};

}  // namespace

extern "C" {

// The ABI version: native.py refuses a library that answers anything else.
int preflight_q8_0_abi() { return 1; }

// 0 on success; 1 when N is odd (outputs go in pairs), 2 for a non-positive size.
int preflight_q8_0_matmul(const int8_t* w, const float* ws, const int8_t* xq, const float* dq, float* out, int64_t M,
                          int64_t N, int64_t G, int threads) {
  if (M <= 0 || N <= 0 || G <= 0 || threads <= 0) return 2;
  if (N % 2) return 1;
  // Each block of each activation row, repeated into both halves of a 64-byte register (one per output).
  std::vector<__m512i> xpat(static_cast<size_t>(2 * M * G));
  for (int64_t t = 0; t < 2 * M; ++t)
    for (int64_t g = 0; g < G; ++g) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + (t * G + g) * kBlock));
      xpat[t * G + g] = _mm512_inserti64x4(_mm512_castsi256_si512(b), b, 1);
    }
  const int64_t pairs_total = N / 2;
  const int64_t tasks = (pairs_total + kPairsPerTask - 1) / kPairsPerTask;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t p0 = task * kPairsPerTask;
    const int64_t p1 = p0 + kPairsPerTask < pairs_total ? p0 + kPairsPerTask : pairs_total;
    for (int64_t m0 = 0; m0 < M; m0 += kMaxRowsPerPass) {
      const int64_t rows = M - m0 < kMaxRowsPerPass ? M - m0 : kMaxRowsPerPass;
      kPairs[rows](w, ws, xpat.data(), dq, out, M, N, G, m0, p0, p1);
    }
  }
  return 0;
}

}  // extern "C"
