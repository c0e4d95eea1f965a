// preflight::int4_mm(x, packed, group_size, scales_and_zeros): torch's packed int4 matmul, with 1-16 activation rows (a
// decode step's batch) done on AVX-512 VNNI.
//
// Built and loaded by engine/quant/native.py, registered as a torch operator so that the compiled
// decode packages (AOTInductor) call it like any aten op. It takes exactly the buffers of
// `aten::_weight_int4pack_mm_for_cpu` (the packed weight that `_convert_weight_to_int4pack_for_cpu`
// made and the (G, N, 2) bf16 scale / zero pairs, w = (q - 8) * scale + zero) and gives its result;
// for more than 16 rows (a prompt) it *is* that kernel, so nothing is stored twice.
//
// Why: at one row torch's kernel widens every 4-bit code to float before its FMA, so it is
// compute-bound and streams a decode step's 66 MB of int4 weights at ~25 GB/s where the memory
// gives 60 (all 120 of a step's int4 matmuls back to back, 2 threads: 2.6 ms torch, 1.8 ms here). Here codes stay bytes: the activation row is quantized to int8 per 32-wide block as two
// terms (x ~= d1 q1 + d2 q2, |error| <= max|x| / 64516: finer than the bf16 torch's kernel takes),
// and vpdpbusd multiplies 4 codes by 4 activations per lane with exact int32 sums. Each lane is one
// output, so no horizontal sums are needed; scales are applied once per 32-wide block.
//
// The packed layout (AVX-512 build of torch, checked at load against torch's own kernel by
// native.py): for each 64-output block, K rows of 32 bytes; byte j of row k holds output j's code
// in its low nibble and output 32 + j's in its high nibble.

#include <ATen/core/Tensor.h>
#include <ATen/ops/_weight_int4pack_mm_for_cpu.h>  // per-operator headers: a third of ATen.h's build time
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kBlockN = 64;  // outputs per packed block
constexpr int64_t kBlockK = 32;  // activation quantization block (and the smallest weight group)
constexpr float kInt8Max = 127.0f;
constexpr int64_t kCodesAhead = 2048;  // software prefetch distance in the packed codes, bytes
// Rows run two at a time over each block (more would not fit the 32 vector registers: each row holds 8
// int32 sums and 4 float accumulators); the later pairs read the block's codes from cache. Per row this
// stays below torch's kernel up to 16 rows (0.26 against 0.36 ms a row for 8 matrices of 12288 x 576); beyond, torch's
// float FMAs shared by all the rows are as fast.
constexpr int64_t kMaxNativeRows = 16;

// Two int8 terms per 32-wide block of one activation row, and each block's plain sum. Kept per thread and
// reused, so a call allocates nothing but its output.
struct QuantizedRow {
  std::vector<int8_t> q1, q2;
  std::vector<float> d1, d2, block_sum;
};

// 32 activations as two registers of float32, from float32 or bfloat16.
inline void load_block(const void* x, bool bf16, int64_t offset, __m512& v0, __m512& v1) {
  if (bf16) {
    const uint16_t* p = static_cast<const uint16_t*>(x) + offset;
    v0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
    v1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16))), 16));
  } else {
    const float* p = static_cast<const float*>(x) + offset;
    v0 = _mm512_loadu_ps(p);
    v1 = _mm512_loadu_ps(p + 16);
  }
}

// q = round(v / d) in -127..127, d = max|v| / 127 (0 for an all-zero block); returns d.
inline float quantize_block(__m512 v0, __m512 v1, int8_t* q) {
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
  const float d = amax / kInt8Max;
  const __m512 inverse = _mm512_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
  // cvtps rounds to nearest even, as nearbyint; |v| / d <= 127 so the saturating narrowing never clips
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, inverse))));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, inverse))));
  return d;
}

// False when the row holds an inf or NaN (torch's kernel then takes it, carrying them as float arithmetic does).
bool quantize_row(const void* x, bool bf16, int64_t K, QuantizedRow& row) {
  const int64_t blocks = K / kBlockK;
  row.q1.resize(K), row.q2.resize(K), row.d1.resize(blocks), row.d2.resize(blocks), row.block_sum.resize(blocks);
  constexpr int kNonFinite = 0x01 | 0x80 | 0x08 | 0x10;  // fpclass: quiet NaN, signalling NaN, +inf, -inf
  for (int64_t b = 0; b < blocks; ++b) {
    __m512 v0, v1;
    load_block(x, bf16, b * kBlockK, v0, v1);
    if (_mm512_fpclass_ps_mask(v0, kNonFinite) | _mm512_fpclass_ps_mask(v1, kNonFinite)) return false;
    row.block_sum[b] = _mm512_reduce_add_ps(_mm512_add_ps(v0, v1));
    int8_t* q1 = row.q1.data() + b * kBlockK;
    const float d1 = quantize_block(v0, v1, q1);
    const __m512 r0 = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q1)))), _mm512_set1_ps(d1), v0);
    const __m512 r1 = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q1 + 16)))), _mm512_set1_ps(d1), v1);
    row.d1[b] = d1;
    row.d2[b] = quantize_block(r0, r1, row.q2.data() + b * kBlockK);
  }
  return true;
}

// float32 to bfloat16, rounding to nearest even (finite values; the outputs of finite rows are).
inline void store_bf16(uint16_t* out, __m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi32_epi16(rounded));
}

// Outputs [64 nb, 64 nb + 64) of R rows (out: R x N). packed: this block's K x 32 bytes; sz: (G, N, 2) bf16 as
// uint16. Each step's unpacked codes serve every row, so a second row costs its dot products, not the unpacking.
template <int R>
void block_rows(const uint8_t* packed, const uint16_t* sz, const QuantizedRow* const* rows, void* out, bool bf16_out,
                int64_t nb, int64_t N, int64_t K, int64_t group_size) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i high16 = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m512 eight = _mm512_set1_ps(8.0f);
  // Lane i of a dpbusd operand takes output i's codes at k, k+1 (rows k, k+1 of the first register)
  // and k+2, k+3 (the second): bytes i, 32+i, 64+i, 96+i of the two registers, for outputs 0..15;
  // 16 more for outputs 16..31. The high nibbles give outputs 32..63 the same way.
  alignas(64) uint8_t first[64], second[64];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 4; ++j) first[4 * i + j] = static_cast<uint8_t>(32 * j + i), second[4 * i + j] = static_cast<uint8_t>(32 * j + 16 + i);
  const __m512i pick_first = _mm512_load_si512(first), pick_second = _mm512_load_si512(second);

  __m512 acc[R][4];
  const int8_t* q1[R];
  const int8_t* q2[R];
  for (int r = 0; r < R; ++r) {
    q1[r] = rows[r]->q1.data(), q2[r] = rows[r]->q2.data();
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
  }
  const int64_t groups = K / group_size;
  for (int64_t g = 0; g < groups; ++g) {
    __m512 scale[4], mz[4];
    // The next block's scales for this group: the G groups lie N x 4 bytes apart, pages apart, which the
    // hardware prefetcher does not follow, so without this each group's scales wait on memory.
    if ((nb + 1) * kBlockN < N)
      for (int j = 0; j < 4; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(sz + 2 * (g * N + (nb + 1) * kBlockN + 16 * j)), _MM_HINT_T0);
    for (int j = 0; j < 4; ++j) {
      const __m512i pairs = _mm512_loadu_si512(sz + 2 * (g * N + nb * kBlockN + 16 * j));
      scale[j] = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
      mz[j] = _mm512_fnmadd_ps(eight, scale[j], _mm512_castsi512_ps(_mm512_and_si512(pairs, high16)));
    }
    for (int64_t b = g * group_size / kBlockK; b < (g + 1) * group_size / kBlockK; ++b) {
      __m512i s1[R][4], s2[R][4];
      for (int r = 0; r < R; ++r)
        for (int j = 0; j < 4; ++j) s1[r][j] = _mm512_setzero_si512(), s2[r][j] = _mm512_setzero_si512();
      for (int64_t k = b * kBlockK; k < (b + 1) * kBlockK; k += 4) {
        // codes 2 KB ahead (measured: the step's int4 weights 2.2-2.3 ms without this, 1.8 with it)
        _mm_prefetch(reinterpret_cast<const char*>(packed + k * 32 + kCodesAhead), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(packed + k * 32 + kCodesAhead + 64), _MM_HINT_T0);
        const __m512i z0 = _mm512_loadu_si512(packed + k * 32), z1 = _mm512_loadu_si512(packed + (k + 2) * 32);
        const __m512i lo0 = _mm512_and_si512(z0, low4), lo1 = _mm512_and_si512(z1, low4);
        const __m512i hi0 = _mm512_and_si512(_mm512_srli_epi16(z0, 4), low4);
        const __m512i hi1 = _mm512_and_si512(_mm512_srli_epi16(z1, 4), low4);
        const __m512i codes[4] = {_mm512_permutex2var_epi8(lo0, pick_first, lo1),
                                  _mm512_permutex2var_epi8(lo0, pick_second, lo1),
                                  _mm512_permutex2var_epi8(hi0, pick_first, hi1),
                                  _mm512_permutex2var_epi8(hi0, pick_second, hi1)};
        for (int r = 0; r < R; ++r) {
          int32_t x1, x2;
          std::memcpy(&x1, q1[r] + k, 4);
          std::memcpy(&x2, q2[r] + k, 4);
          const __m512i b1 = _mm512_set1_epi32(x1), b2 = _mm512_set1_epi32(x2);
          for (int j = 0; j < 4; ++j)
            s1[r][j] = _mm512_dpbusd_epi32(s1[r][j], codes[j], b1), s2[r][j] = _mm512_dpbusd_epi32(s2[r][j], codes[j], b2);
        }
      }
      for (int r = 0; r < R; ++r) {
        const QuantizedRow& row = *rows[r];
        const __m512 d1 = _mm512_set1_ps(row.d1[b]), d2 = _mm512_set1_ps(row.d2[b]), sum = _mm512_set1_ps(row.block_sum[b]);
        for (int j = 0; j < 4; ++j) {
          const __m512 dot =
              _mm512_fmadd_ps(_mm512_cvtepi32_ps(s2[r][j]), d2, _mm512_mul_ps(_mm512_cvtepi32_ps(s1[r][j]), d1));
          acc[r][j] = _mm512_fmadd_ps(dot, scale[j], acc[r][j]);
          acc[r][j] = _mm512_fmadd_ps(mz[j], sum, acc[r][j]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) {
      const int64_t n = r * N + nb * kBlockN + 16 * j;
      if (bf16_out) store_bf16(static_cast<uint16_t*>(out) + n, acc[r][j]);
      else _mm512_storeu_ps(static_cast<float*>(out) + n, acc[r][j]);
    }
}

at::Tensor int4_mm(const at::Tensor& x, const at::Tensor& packed, int64_t group_size,
                   const at::Tensor& scales_and_zeros) {
  TORCH_CHECK(x.dim() == 2 && packed.dim() == 2 && scales_and_zeros.dim() == 3, "int4_mm: x (M, K), packed (N, K/2), scales (G, N, 2)");
  const int64_t M = x.size(0), K = x.size(1), N = packed.size(0);
  const bool native = M >= 1 && M <= kMaxNativeRows && x.device().is_cpu() && packed.scalar_type() == at::kByte &&
                      scales_and_zeros.scalar_type() == at::kBFloat16 && N % kBlockN == 0 && K % group_size == 0 &&
                      group_size % kBlockK == 0 && packed.size(1) * 2 == K && scales_and_zeros.size(0) == K / group_size &&
                      scales_and_zeros.size(1) == N && scales_and_zeros.size(2) == 2;
  if (!native) return at::_weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros);
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  if (!bf16 && x.scalar_type() != at::kFloat) return at::_weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros);
  const at::Tensor xc = x.contiguous(), w = packed.contiguous(), sz = scales_and_zeros.contiguous();
  // This thread's rows, reused call to call; the workers read them through `rows` (naming the thread_local
  // there would give each worker its own, empty, copy).
  thread_local QuantizedRow mine[kMaxNativeRows];
  const QuantizedRow* rows[kMaxNativeRows];
  const int64_t row_bytes = K * xc.element_size();
  for (int64_t r = 0; r < M; ++r) {
    if (!quantize_row(static_cast<const char*>(xc.data_ptr()) + r * row_bytes, bf16, K, mine[r]))
      return at::_weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros);
    rows[r] = &mine[r];
  }
  at::Tensor out = at::empty({M, N}, x.options());
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const uint16_t* szp = reinterpret_cast<const uint16_t*>(sz.data_ptr<at::BFloat16>());
  void* op = out.data_ptr();
  at::parallel_for(0, N / kBlockN, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nb = begin; nb < end; ++nb) {
      for (int64_t r0 = 0; r0 < M; r0 += 2) {
        void* o = static_cast<char*>(op) + r0 * N * out.element_size();
        if (M - r0 == 1) block_rows<1>(wp + nb * K * 32, szp, rows + r0, o, bf16, nb, N, K, group_size);
        else block_rows<2>(wp + nb * K * 32, szp, rows + r0, o, bf16, nb, N, K, group_size);
      }
    }
  });
  return out;
}

// Shapes only, for export and compile tracing: sizes stay symbolic (the server's batched decode step has a
// dynamic row count; reading x.size(0) here would pin it to the example's).
at::Tensor int4_mm_meta(const at::Tensor& x, const at::Tensor& packed, int64_t, const at::Tensor&) {
  return at::empty_symint({x.sym_size(0), packed.sym_size(0)}, x.options());
}

}  // namespace

extern "C" int preflight_int4_abi() { return 1; }

TORCH_LIBRARY(preflight, m) {
  m.def("int4_mm(Tensor x, Tensor packed, int group_size, Tensor scales_and_zeros) -> Tensor");
}
TORCH_LIBRARY_IMPL(preflight, CPU, m) { m.impl("int4_mm", &int4_mm); }
TORCH_LIBRARY_IMPL(preflight, Meta, m) { m.impl("int4_mm", &int4_mm_meta); }
