// Fused attention forward for inference on NVIDIA GPUs (sm_80 and newer): softmax(scale * q k^T
// [soft-capped] [causal / sliding-window masked]) v without materializing the score matrix.
//
// The algorithm is the one of FlashAttention-2 (Dao, 2023, arXiv 2307.08691): every warp owns 16
// query rows, walks the keys in tiles kept in shared memory, keeps a running row maximum and sum
// (the "online softmax"), rescales its output accumulator when the maximum grows, and divides by
// the sum once at the end. Written for this project from the paper and the PTX ISA; the register
// layouts below are those of `mma.sync.aligned.m16n8k16` and `ldmatrix` in NVIDIA's PTX ISA
// ("Matrix fragments for mma.m16n8k16 with floating point type"; "ldmatrix"):
//   lane = 4 * g + t (g = group 0..7, t = thread in group 0..3)
//   A 16x16 (row-major), 4 x b32: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   B 16x8 (column-major), 2 x b32: b0 (k = 2t..2t+1, n = g), b1 (k = 2t+8.., n = g)
//   C 16x8 f32: c0, c1 (g, 2t..2t+1), c2, c3 (g+8, 2t..2t+1)
//   ldmatrix.x4: lane l gives the address of row l % 8 of matrix l / 8 and receives, per matrix,
//   the word (row l / 4, word l % 4); with .trans the matrix is transposed on the way.
//
// Scores are formed in f32 from bf16 / f16 inputs (tensor cores, f32 accumulation), the
// probabilities are rounded to the input type for the product with v (as flash attention does),
// the output is accumulated in f32 and written in the input type with the heads merged:
// out[b, i, h, :] for q[b, h, i, :], which is the layout the output projection reads.
//
// Layouts: q [B, H, T, D], k and v [B, KV, S, D], any strides for the first three dimensions,
// unit stride for the last; strides and offsets in elements, multiples of 8 (16-byte loads).
// Query head h reads key/value head h / (H / KV) (grouped-query attention). Query row i sits at
// position offset + i; with `causal` it sees keys j <= offset + i and, when window > 0, only
// those with offset + i - j < window. Keys j >= S never count.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define WARPS 4
#define BM (16 * WARPS)

template <typename T> struct Pack;
template <> struct Pack<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t two(float a, float b) {
    __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t *>(&v);
  }
  static __device__ __forceinline__ __nv_bfloat16 one(float a) { return __float2bfloat16(a); }
};
template <> struct Pack<__half> {
  static __device__ __forceinline__ uint32_t two(float a, float b) {
    __half2 v = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t *>(&v);
  }
  static __device__ __forceinline__ __half one(float a) { return __float2half(a); }
};
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// d += a * b for one 16x8x16 tile.
template <typename T>
__device__ __forceinline__ void mma16816(float *d, const uint32_t *a, uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t *r, const void *smem) {
  uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t *r, const void *smem) {
  uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// 16-byte asynchronous copy global -> shared (sm_80+); with pred false nothing is read and the
// 16 bytes are zero-filled (src-size 0).
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool pred) {
  uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

struct Params {
  long long qsb, qsh, qsr;  // q strides: batch, head, row
  long long ksb, ksh, ksr;  // k strides
  long long vsb, vsh, vsr;  // v strides
  int B, H, KV, T, S;
  float scale;    // applied to q k^T
  float softcap;  // 0: none, else cap * tanh(s / cap)
  int causal;     // 0 / 1
  int offset;     // position of query row 0
  int window;     // 0: none
};

// BN keys per tile, STAGES (1 or 2) tiles in flight: with 2, the next K / V tile is copied
// (cp.async) while the current one is multiplied. Shared memory: per stage the K and V tiles (BN
// rows of D + 8 elements each; the 8 elements of padding keep the fragment reads free of bank
// conflicts); the Q tile is staged in the same space before the first key tile. Causal launches
// take their row blocks from the last (most keys) to the first, so the longest blocks start
// first and the short ones fill the tail.
// V2 (a variant for measurement, GRIFFON_FLASH_KERNEL=v2): K fragments by ldmatrix (one
// instruction for four 8x8 blocks instead of eight 32-bit loads) and no mask arithmetic on key
// tiles that lie wholly inside [0, S) of a non-causal call.
template <typename T, int D, int BN, int STAGES, bool V2 = false>
__device__ __forceinline__ void flash_fwd(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v,
                                          T *__restrict__ out, const Params p) {
  constexpr int LD = D + 8;
  constexpr int KV_ELEMS = STAGES * 2 * BN * LD;
  constexpr int Q_ELEMS = BM * LD;
  constexpr int SMEM = KV_ELEMS > Q_ELEMS ? KV_ELEMS : Q_ELEMS;
  constexpr int KS = D / 16;  // k-steps of the q k^T product
  constexpr int NT = BN / 8;  // score tiles of 8 keys
  constexpr int OT = D / 8;   // output tiles of 8 channels
  constexpr int CH = D / 8;   // 16-byte chunks per row
  __shared__ __align__(16) T smem[SMEM];

  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int b = blockIdx.z, h = blockIdx.y;
  const int kvh = h / (p.H / p.KV);
  const int row_block = p.causal ? (int)(gridDim.x - 1 - blockIdx.x) : (int)blockIdx.x;
  const int row0 = row_block * BM;  // first query row of the block
  const T *qb = q + b * p.qsb + h * p.qsh;
  const T *kb = k + b * p.ksb + kvh * p.ksh;
  const T *vb = v + b * p.vsb + kvh * p.vsh;

  // Q tile -> shared -> registers
  for (int c = tid; c < BM * CH; c += WARPS * 32) {
    int r = c / CH, col = (c % CH) * 8;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (row0 + r < p.T) val = *reinterpret_cast<const uint4 *>(qb + (long long)(row0 + r) * p.qsr + col);
    *reinterpret_cast<uint4 *>(smem + r * LD + col) = val;
  }
  __syncthreads();
  uint32_t qf[KS][4];
  {
    const T *qs = smem + (warp * 16) * LD;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      qf[kk][0] = *reinterpret_cast<const uint32_t *>(qs + g * LD + kk * 16 + 2 * t);
      qf[kk][1] = *reinterpret_cast<const uint32_t *>(qs + (g + 8) * LD + kk * 16 + 2 * t);
      qf[kk][2] = *reinterpret_cast<const uint32_t *>(qs + g * LD + kk * 16 + 2 * t + 8);
      qf[kk][3] = *reinterpret_cast<const uint32_t *>(qs + (g + 8) * LD + kk * 16 + 2 * t + 8);
    }
  }
  __syncthreads();

  // the keys any row of this block may see
  int kv_begin = 0, kv_end = p.S;
  if (p.causal) {
    int last_row = min(p.T, row0 + BM) - 1;
    kv_end = min(p.S, p.offset + last_row + 1);
    if (p.window > 0) kv_begin = max(0, p.offset + row0 - p.window + 1);
  }
  kv_begin = (kv_begin / BN) * BN;

  const float LOG2E = 1.4426950408889634f;
  float o[OT][4];
#pragma unroll
  for (int i = 0; i < OT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY};  // running maximum of rows g, g + 8 (natural units)
  float l[2] = {0.f, 0.f};              // this thread's part of the running sums
  const int qrow[2] = {row0 + warp * 16 + g, row0 + warp * 16 + g + 8};

  // K / V tile copies of one stage: rows past S are zero-filled (and masked below)
  auto load_kv = [&](int stage, int start) {
    T *Kd = smem + stage * 2 * BN * LD;
    T *Vd = Kd + BN * LD;
    for (int c = tid; c < BN * CH; c += WARPS * 32) {
      int r = c / CH, col = (c % CH) * 8;
      bool in = start + r < p.S;
      long long row = in ? start + r : 0;
      cp_async16(Kd + r * LD + col, kb + row * p.ksr + col, in);
      cp_async16(Vd + r * LD + col, vb + row * p.vsr + col, in);
    }
  };
  const int n_tiles = kv_end > kv_begin ? (kv_end - kv_begin + BN - 1) / BN : 0;
  if (STAGES == 2 && n_tiles > 0) {
    load_kv(0, kv_begin);
    cp_async_commit();
  }
  for (int it = 0; it < n_tiles; ++it) {
    const int start = kv_begin + it * BN;
    int stage = 0;
    if (STAGES == 2) {
      stage = it & 1;
      if (it + 1 < n_tiles) load_kv(stage ^ 1, start + BN);
      cp_async_commit();  // possibly empty: keeps "all but the newest group" meaning this tile
      cp_async_wait<1>();
    } else {
      load_kv(0, start);
      cp_async_commit();
      cp_async_wait<0>();
    }
    __syncthreads();
    const T *Ks = smem + stage * 2 * BN * LD;
    const T *Vs = Ks + BN * LD;

    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      if constexpr (V2) {
        // matrices: (keys nt*8.., d kk*16..), (keys nt*8.., d kk*16+8..), the same for nt + 1;
        // lane l addresses row l % 8 of matrix l / 8 and receives b0, b1 of both key tiles
#pragma unroll
        for (int nt = 0; nt < NT; nt += 2) {
          int mat = lane / 8, rr = lane % 8;
          const T *src = Ks + ((nt + (mat >> 1)) * 8 + rr) * LD + kk * 16 + (mat & 1) * 8;
          uint32_t bk[4];
          ldmatrix_x4(bk, src);
          mma16816<T>(s[nt], qf[kk], bk[0], bk[1]);
          mma16816<T>(s[nt + 1], qf[kk], bk[2], bk[3]);
        }
      } else {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const T *kr = Ks + (nt * 8 + g) * LD + kk * 16 + 2 * t;
          uint32_t b0 = *reinterpret_cast<const uint32_t *>(kr);
          uint32_t b1 = *reinterpret_cast<const uint32_t *>(kr + 8);
          mma16816<T>(s[nt], qf[kk], b0, b1);
        }
      }
    }

    // scale, soft-cap, mask; the tile's row maxima
    float tmax[2] = {-INFINITY, -INFINITY};
    const bool full = V2 && !p.causal && start + BN <= p.S;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int r = e / 2;
        float x = s[nt][e] * p.scale;
        if (p.softcap > 0.f) x = p.softcap * tanhf(x / p.softcap);
        if (!full) {
          int key = start + nt * 8 + 2 * t + (e & 1);
          bool ok = key < p.S;
          if (p.causal) {
            int pos = p.offset + qrow[r];
            ok = ok && key <= pos && (p.window <= 0 || pos - key < p.window);
          }
          x = ok ? x : -INFINITY;
        }
        s[nt][e] = x;
        tmax[r] = fmaxf(tmax[r], x);
      }
    }
    float alpha[2], mneg[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffff, tmax[r], 1));
      tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffff, tmax[r], 2));
      float mnew = fmaxf(m[r], tmax[r]);
      // a row with no visible key yet keeps everything at zero (no inf - inf)
      alpha[r] = (mnew == -INFINITY) ? 1.f : exp2f((m[r] - mnew) * LOG2E);
      mneg[r] = (mnew == -INFINITY) ? 0.f : -mnew * LOG2E;
      m[r] = mnew;
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int i = 0; i < OT; ++i) {
      o[i][0] *= alpha[0];
      o[i][1] *= alpha[0];
      o[i][2] *= alpha[1];
      o[i][3] *= alpha[1];
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float pv = exp2f(fmaf(s[nt][e], LOG2E, mneg[e / 2]));
        s[nt][e] = pv;
        l[e / 2] += pv;
      }
    }

    // o += P V: P from the score registers (the C layout of two 8-key tiles is the A layout of
    // one 16-key step), V^T fragments by ldmatrix.trans from the row-major V tile
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      a[0] = Pack<T>::two(s[2 * kk][0], s[2 * kk][1]);
      a[1] = Pack<T>::two(s[2 * kk][2], s[2 * kk][3]);
      a[2] = Pack<T>::two(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = Pack<T>::two(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int ot = 0; ot < OT; ot += 2) {
        int mat = lane / 8, rr = lane % 8;
        const T *src = Vs + (kk * 16 + (mat & 1) * 8 + rr) * LD + (ot + (mat >> 1)) * 8;
        uint32_t bv[4];
        ldmatrix_x4_trans(bv, src);
        mma16816<T>(o[ot], a, bv[0], bv[1]);
        mma16816<T>(o[ot + 1], a, bv[2], bv[3]);
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffff, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffff, l[r], 2);
  }
  const float inv[2] = {l[0] > 0.f ? 1.f / l[0] : 0.f, l[1] > 0.f ? 1.f / l[1] : 0.f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (qrow[r] >= p.T) continue;
    T *dst = out + (((long long)b * p.T + qrow[r]) * p.H + h) * D;
#pragma unroll
    for (int ot = 0; ot < OT; ++ot) {
      *reinterpret_cast<uint32_t *>(dst + ot * 8 + 2 * t) =
          Pack<T>::two(o[ot][2 * r] * inv[r], o[ot][2 * r + 1] * inv[r]);
    }
  }
}

#define FLASH_KERNEL(NAME, TY, D, BN, STAGES)                                                            \
  extern "C" __global__ void __launch_bounds__(WARPS * 32)                                               \
      NAME(const TY *q, const TY *k, const TY *v, TY *out, const Params p) {                             \
    flash_fwd<TY, D, BN, STAGES>(q, k, v, out, p);                                                       \
  }

FLASH_KERNEL(flash_fwd_bf16_d32, __nv_bfloat16, 32, 64, 2)
FLASH_KERNEL(flash_fwd_bf16_d64, __nv_bfloat16, 64, 64, 2)
FLASH_KERNEL(flash_fwd_bf16_d128, __nv_bfloat16, 128, 32, 2)
FLASH_KERNEL(flash_fwd_bf16_d256, __nv_bfloat16, 256, 32, 1)
FLASH_KERNEL(flash_fwd_f16_d32, __half, 32, 64, 2)
FLASH_KERNEL(flash_fwd_f16_d64, __half, 64, 64, 2)
FLASH_KERNEL(flash_fwd_f16_d128, __half, 128, 32, 2)
FLASH_KERNEL(flash_fwd_f16_d256, __half, 256, 32, 1)
#define FLASH_KERNEL_MINB(NAME, TY, D, BN, STAGES, MINB)                                                 \
  extern "C" __global__ void __launch_bounds__(WARPS * 32, MINB)                                         \
      NAME(const TY *q, const TY *k, const TY *v, TY *out, const Params p) {                             \
    flash_fwd<TY, D, BN, STAGES>(q, k, v, out, p);                                                       \
  }

// Variants for measurement (GRIFFON_FLASH_KERNEL, src/flash.rs), not the default until measured:
// o4: at most 128 registers so that 4 blocks (16 warps) fit an SM (the default's 155 registers
// allow 3: 18.75% occupancy, latency-bound in session 8's profile); n16: head size 256 with 16-key
// tiles in two stages (the default's 32-key tiles do not fit two stages in 48 KB).
FLASH_KERNEL_MINB(flash_fwd_bf16_d32_o4, __nv_bfloat16, 32, 64, 2, 4)
FLASH_KERNEL_MINB(flash_fwd_bf16_d64_o4, __nv_bfloat16, 64, 64, 2, 4)
FLASH_KERNEL_MINB(flash_fwd_bf16_d128_o4, __nv_bfloat16, 128, 32, 2, 4)
FLASH_KERNEL_MINB(flash_fwd_f16_d32_o4, __half, 32, 64, 2, 4)
FLASH_KERNEL_MINB(flash_fwd_f16_d64_o4, __half, 64, 64, 2, 4)
FLASH_KERNEL_MINB(flash_fwd_f16_d128_o4, __half, 128, 32, 2, 4)
#define FLASH_KERNEL_V2(NAME, TY, D, BN, STAGES)                                                         \
  extern "C" __global__ void __launch_bounds__(WARPS * 32)                                               \
      NAME(const TY *q, const TY *k, const TY *v, TY *out, const Params p) {                             \
    flash_fwd<TY, D, BN, STAGES, true>(q, k, v, out, p);                                                 \
  }
// v2: K by ldmatrix and unmasked full tiles (see flash_fwd)
FLASH_KERNEL_V2(flash_fwd_bf16_d32_v2, __nv_bfloat16, 32, 64, 2)
FLASH_KERNEL_V2(flash_fwd_bf16_d64_v2, __nv_bfloat16, 64, 64, 2)
FLASH_KERNEL_V2(flash_fwd_bf16_d128_v2, __nv_bfloat16, 128, 32, 2)
FLASH_KERNEL_V2(flash_fwd_bf16_d256_v2, __nv_bfloat16, 256, 32, 1)
FLASH_KERNEL_V2(flash_fwd_f16_d32_v2, __half, 32, 64, 2)
FLASH_KERNEL_V2(flash_fwd_f16_d64_v2, __half, 64, 64, 2)
FLASH_KERNEL_V2(flash_fwd_f16_d128_v2, __half, 128, 32, 2)
FLASH_KERNEL_V2(flash_fwd_f16_d256_v2, __half, 256, 32, 1)
FLASH_KERNEL(flash_fwd_bf16_d256_n16, __nv_bfloat16, 256, 16, 2)
FLASH_KERNEL(flash_fwd_f16_d256_n16, __half, 256, 16, 2)

// The single-stage variants session 8's second device call verified (GRIFFON_FLASH_STAGES=1).
FLASH_KERNEL(flash_fwd_bf16_d32_s1, __nv_bfloat16, 32, 64, 1)
FLASH_KERNEL(flash_fwd_bf16_d64_s1, __nv_bfloat16, 64, 64, 1)
FLASH_KERNEL(flash_fwd_bf16_d128_s1, __nv_bfloat16, 128, 64, 1)
FLASH_KERNEL(flash_fwd_f16_d32_s1, __half, 32, 64, 1)
FLASH_KERNEL(flash_fwd_f16_d64_s1, __half, 64, 64, 1)
FLASH_KERNEL(flash_fwd_f16_d128_s1, __half, 128, 64, 1)

// ---------------------------------------------------------------------------------------------
// Decoding (one query row per head): split-KV attention ("flash-decoding"). The keys are cut into
// chunks of DECODE_CHUNK; block (b * KV + kv head, chunk) scores the chunk for the H / KV query
// heads that share the kv head, keeps its maximum m, its sum l of exp(s - m) and its unnormalised
// output o = sum exp(s - m) v in f32 in a workspace; decode_combine merges the chunks
// (o = sum_c e^(m_c - M) o_c / sum_c e^(m_c - M) l_c) and writes out[b, 0, h, :] (heads merged).
// Query row 0 sits at position `offset`; it sees keys j <= offset (and offset - j < window).
#define DECODE_CHUNK 128
#define DECODE_THREADS 256
#define DECODE_MAX_REP 8

template <typename T, int D, int CHUNK>
__device__ void decode_partial(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v,
                               float *__restrict__ ws_o, float *__restrict__ ws_ml, const Params p, int nc) {
  constexpr int VEC = D / 32;  // elements of a key row per lane
  __shared__ float qs[DECODE_MAX_REP][D];
  __shared__ float sc[DECODE_MAX_REP][CHUNK];
  __shared__ float ml[DECODE_MAX_REP][2];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, nwarps = DECODE_THREADS / 32;
  const int b = blockIdx.x / p.KV, kvh = blockIdx.x % p.KV, c = blockIdx.y;
  const int rep = p.H / p.KV;
  const int pos = p.offset;
  const int lo = p.window > 0 ? max(0, pos - p.window + 1) : 0;
  const int hi = min(p.S, pos + 1);  // visible keys [lo, hi)
  const int start = c * CHUNK;
  const T *kb = k + b * p.ksb + kvh * p.ksh;
  const T *vb = v + b * p.vsb + kvh * p.vsh;
  for (int i = tid; i < rep * D; i += DECODE_THREADS) {
    int r = i / D, d = i % D;
    qs[r][d] = to_float(q[b * p.qsb + (long long)(kvh * rep + r) * p.qsh + d]);
  }
  __syncthreads();
  // scores: each warp a key at a time, each lane VEC channels
  for (int jj = warp; jj < CHUNK; jj += nwarps) {
    int j = start + jj;
    bool ok = j >= lo && j < hi;
    float kv[VEC];
    if (ok) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) kv[e] = to_float(kb[(long long)j * p.ksr + lane * VEC + e]);
    }
    for (int r = 0; r < rep; ++r) {
      float part = 0.f;
      if (ok) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) part += qs[r][lane * VEC + e] * kv[e];
      }
      for (int o = 16; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffff, part, o);
      if (lane == 0) {
        float x = part * p.scale;
        if (p.softcap > 0.f) x = p.softcap * tanhf(x / p.softcap);
        sc[r][jj] = ok ? x : -INFINITY;
      }
    }
  }
  __syncthreads();
  // per head: maximum, exponentials, sum (warp r for head r)
  for (int r = warp; r < rep; r += nwarps) {
    float m = -INFINITY;
    for (int jj = lane; jj < CHUNK; jj += 32) m = fmaxf(m, sc[r][jj]);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
    float l = 0.f;
    for (int jj = lane; jj < CHUNK; jj += 32) {
      float e = m == -INFINITY ? 0.f : __expf(sc[r][jj] - m);
      sc[r][jj] = e;
      l += e;
    }
    for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffff, l, o);
    if (lane == 0) {
      ml[r][0] = m;
      ml[r][1] = l;
    }
  }
  __syncthreads();
  const int jend = min(CHUNK, hi - start);
  for (int i = tid; i < rep * D; i += DECODE_THREADS) {
    int r = i / D, d = i % D;
    float acc = 0.f;
    for (int jj = max(0, lo - start); jj < jend; ++jj) acc += sc[r][jj] * to_float(vb[(long long)(start + jj) * p.vsr + d]);
    long long h = (long long)b * p.H + kvh * rep + r;
    ws_o[(h * nc + c) * D + d] = acc;
    if (d == 0) {
      ws_ml[(h * nc + c) * 2] = ml[r][0];
      ws_ml[(h * nc + c) * 2 + 1] = ml[r][1];
    }
  }
}

template <typename T>
__device__ void decode_combine(const float *__restrict__ ws_o, const float *__restrict__ ws_ml, T *__restrict__ out,
                               int nc, int D) {
  const long long h = blockIdx.x;  // b * H + head
  float M = -INFINITY;
  for (int c = 0; c < nc; ++c) M = fmaxf(M, ws_ml[(h * nc + c) * 2]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float L = 0.f, O = 0.f;
    if (M != -INFINITY) {
      for (int c = 0; c < nc; ++c) {
        float m = ws_ml[(h * nc + c) * 2];
        if (m == -INFINITY) continue;
        float w = __expf(m - M);
        L += w * ws_ml[(h * nc + c) * 2 + 1];
        O += w * ws_o[(h * nc + c) * D + d];
      }
    }
    out[h * D + d] = Pack<T>::one(L > 0.f ? O / L : 0.f);
  }
}

#define DECODE_KERNEL(NAME, TY, D, CHUNK)                                                                \
  extern "C" __global__ void __launch_bounds__(DECODE_THREADS)                                           \
      NAME(const TY *q, const TY *k, const TY *v, float *ws_o, float *ws_ml, const Params p, int nc) {     \
    decode_partial<TY, D, CHUNK>(q, k, v, ws_o, ws_ml, p, nc);                                           \
  }
// the default chunk of 128 keys, and 32 / 64 for measurement (GRIFFON_DECODE_CHUNK): session 8's
// profile gave 48 blocks of 128 keys to a 1429-key Gemma-2 layer, too few for 132 SMs
#define DECODE_KERNELS(SUF, TY, D)                                                                       \
  DECODE_KERNEL(decode_partial_##SUF##_d##D, TY, D, DECODE_CHUNK)                                        \
  DECODE_KERNEL(decode_partial_##SUF##_d##D##_c32, TY, D, 32)                                            \
  DECODE_KERNEL(decode_partial_##SUF##_d##D##_c64, TY, D, 64)

DECODE_KERNELS(bf16, __nv_bfloat16, 32)
DECODE_KERNELS(bf16, __nv_bfloat16, 64)
DECODE_KERNELS(bf16, __nv_bfloat16, 128)
DECODE_KERNELS(bf16, __nv_bfloat16, 256)
DECODE_KERNELS(f16, __half, 32)
DECODE_KERNELS(f16, __half, 64)
DECODE_KERNELS(f16, __half, 128)
DECODE_KERNELS(f16, __half, 256)
extern "C" __global__ void decode_combine_bf16(const float *ws_o, const float *ws_ml, __nv_bfloat16 *out, int nc, int D) {
  decode_combine<__nv_bfloat16>(ws_o, ws_ml, out, nc, D);
}
extern "C" __global__ void decode_combine_f16(const float *ws_o, const float *ws_ml, __half *out, int nc, int D) {
  decode_combine<__half>(ws_o, ws_ml, out, nc, D);
}

// ---------------------------------------------------------------------------------------------
// Backward pass for training's attention op (src/attn_grad.rs; the default since it was checked
// and measured on the H100 in session 14, GRIFFON_ATTN_BWD=composed: not): FlashAttention-2's backward (Dao, 2023, arXiv 2307.08691,
// Algorithm 2) with the fragment layouts above. Two kernels:
//   flash_bwd_prep: per query row, lse = log sum_j exp(x_j) over the visible keys (x the scaled,
//     soft-capped scores, formed as flash_fwd forms them) and dd = sum_c dO[c] O[c];
//   flash_bwd: block (64 keys, kv head, batch), each warp 16 keys. For every query head of the
//     kv head and every block of 64 query rows that can see those keys:
//       dP^T = V dO^T and S^T = K Q^T (tensor cores, f32), P^T = exp(x - lse) (0 where masked),
//       dS^T = P^T (dP^T - dd) [(1 - tanh^2) with a soft-cap], dV += P^T dO, dK += dS^T Q,
//       dQ += dS K (dS^T staged in shared memory, each warp 16 query rows), added into an f32
//       buffer with atomics.
//   dK and dQ come out as gradients of q k^T before the scale: the caller multiplies by it.
// P and dS are rounded to the input type for their products (as FlashAttention does); all sums
// are f32. Outputs: lse and dd [B, H, T] f32; dq [B, H, T, D] f32 (zeroed by the caller), dk and
// dv [B, KV, S, D] f32. Head sizes 32 and 64 (the shared tiles of larger ones pass 48 KB).
struct BwdIo {
  long long osb, osh, osr;  // the forward's output O [B, T, H, D]: strides of batch, head, row
  long long gsb, gsh, gsr;  // dO, the same layout
};

#define BWD_BR 64  // query rows per step
#define BWD_BC 64  // keys per block (WARPS x 16)

template <typename T, int D>
__device__ void flash_bwd_prep(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ o,
                               const T *__restrict__ go, float *__restrict__ lse, float *__restrict__ dd,
                               const Params p, const BwdIo io) {
  constexpr int LD = D + 8, BN = 64, KS = D / 16, NT = BN / 8, CH = D / 8;
  __shared__ __align__(16) T smem[BN * LD];  // the Q tile, then each K tile (BM == BN rows)
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int b = blockIdx.z, h = blockIdx.y, kvh = h / (p.H / p.KV);
  const int row0 = blockIdx.x * BM;
  const long long bh = (long long)b * p.H + h;
  // dd of this warp's 16 rows: each lane a part of the channels
  for (int rr = 0; rr < 16; ++rr) {
    const int row = row0 + warp * 16 + rr;
    float acc = 0.f;
    if (row < p.T) {
      const T *gr = go + b * io.gsb + h * io.gsh + row * io.gsr;
      const T *orow = o + b * io.osb + h * io.osh + row * io.osr;
      for (int c = lane; c < D; c += 32) acc += to_float(gr[c]) * to_float(orow[c]);
    }
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, off);
    if (lane == 0 && row < p.T) dd[bh * p.T + row] = acc;
  }
  const T *qb = q + b * p.qsb + h * p.qsh;
  const T *kb = k + b * p.ksb + kvh * p.ksh;
  for (int c = tid; c < BM * CH; c += WARPS * 32) {
    int r = c / CH, col = (c % CH) * 8;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (row0 + r < p.T) val = *reinterpret_cast<const uint4 *>(qb + (long long)(row0 + r) * p.qsr + col);
    *reinterpret_cast<uint4 *>(smem + r * LD + col) = val;
  }
  __syncthreads();
  uint32_t qf[KS][4];
  {
    const T *qs = smem + (warp * 16) * LD;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      qf[kk][0] = *reinterpret_cast<const uint32_t *>(qs + g * LD + kk * 16 + 2 * t);
      qf[kk][1] = *reinterpret_cast<const uint32_t *>(qs + (g + 8) * LD + kk * 16 + 2 * t);
      qf[kk][2] = *reinterpret_cast<const uint32_t *>(qs + g * LD + kk * 16 + 2 * t + 8);
      qf[kk][3] = *reinterpret_cast<const uint32_t *>(qs + (g + 8) * LD + kk * 16 + 2 * t + 8);
    }
  }
  __syncthreads();
  int kv_begin = 0, kv_end = p.S;
  if (p.causal) {
    int last_row = min(p.T, row0 + BM) - 1;
    kv_end = min(p.S, p.offset + last_row + 1);
    if (p.window > 0) kv_begin = max(0, p.offset + row0 - p.window + 1);
  }
  kv_begin = (kv_begin / BN) * BN;
  const float LOG2E = 1.4426950408889634f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int qrow[2] = {row0 + warp * 16 + g, row0 + warp * 16 + g + 8};
  for (int start = kv_begin; start < kv_end; start += BN) {
    for (int c = tid; c < BN * CH; c += WARPS * 32) {
      int r = c / CH, col = (c % CH) * 8;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (start + r < p.S) val = *reinterpret_cast<const uint4 *>(kb + (long long)(start + r) * p.ksr + col);
      *reinterpret_cast<uint4 *>(smem + r * LD + col) = val;
    }
    __syncthreads();
    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const T *kr = smem + (nt * 8 + g) * LD + kk * 16 + 2 * t;
        mma16816<T>(s[nt], qf[kk], *reinterpret_cast<const uint32_t *>(kr), *reinterpret_cast<const uint32_t *>(kr + 8));
      }
    }
    float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int r = e / 2;
        float x = s[nt][e] * p.scale;
        if (p.softcap > 0.f) x = p.softcap * tanhf(x / p.softcap);
        int key = start + nt * 8 + 2 * t + (e & 1);
        bool ok = key < p.S;
        if (p.causal) {
          int pos = p.offset + qrow[r];
          ok = ok && key <= pos && (p.window <= 0 || pos - key < p.window);
        }
        x = ok ? x : -INFINITY;
        s[nt][e] = x;
        tmax[r] = fmaxf(tmax[r], x);
      }
    }
    float mneg[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffff, tmax[r], 1));
      tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffff, tmax[r], 2));
      float mnew = fmaxf(m[r], tmax[r]);
      float alpha = (mnew == -INFINITY) ? 1.f : exp2f((m[r] - mnew) * LOG2E);
      mneg[r] = (mnew == -INFINITY) ? 0.f : -mnew * LOG2E;
      m[r] = mnew;
      l[r] *= alpha;
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) l[e / 2] += exp2f(fmaf(s[nt][e], LOG2E, mneg[e / 2]));
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffff, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffff, l[r], 2);
    if (t == 0 && qrow[r] < p.T) lse[bh * p.T + qrow[r]] = l[r] > 0.f ? m[r] + logf(l[r]) : -INFINITY;
  }
}

template <typename T, int D>
__device__ void flash_bwd(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v,
                          const T *__restrict__ go, const float *__restrict__ lse, const float *__restrict__ dd,
                          float *__restrict__ dq, float *__restrict__ dk, float *__restrict__ dv, const Params p,
                          const BwdIo io) {
  constexpr int LD = D + 8, LDS = BWD_BR + 8, KS = D / 16, NQ = BWD_BR / 8, OT = D / 8, CH = D / 8;
  __shared__ __align__(16) T Ks[BWD_BC * LD];
  __shared__ __align__(16) T Vs[BWD_BC * LD];
  __shared__ __align__(16) T Qs[BWD_BR * LD];
  __shared__ __align__(16) T Gs[BWD_BR * LD];
  __shared__ __align__(16) T St[BWD_BC * LDS];  // dS^T: [key][query]
  __shared__ float lse_s[BWD_BR], dd_s[BWD_BR];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int mat = lane / 8, rr = lane % 8;  // ldmatrix addressing
  const int b = blockIdx.z, kvh = blockIdx.y, key0 = blockIdx.x * BWD_BC;
  const int rep = p.H / p.KV;
  const T *kb = k + b * p.ksb + kvh * p.ksh;
  const T *vb = v + b * p.vsb + kvh * p.vsh;
  for (int c = tid; c < BWD_BC * CH; c += WARPS * 32) {
    int r = c / CH, col = (c % CH) * 8;
    uint4 kx = make_uint4(0, 0, 0, 0), vx = make_uint4(0, 0, 0, 0);
    if (key0 + r < p.S) {
      kx = *reinterpret_cast<const uint4 *>(kb + (long long)(key0 + r) * p.ksr + col);
      vx = *reinterpret_cast<const uint4 *>(vb + (long long)(key0 + r) * p.vsr + col);
    }
    *reinterpret_cast<uint4 *>(Ks + r * LD + col) = kx;
    *reinterpret_cast<uint4 *>(Vs + r * LD + col) = vx;
  }
  const int krow[2] = {key0 + warp * 16 + g, key0 + warp * 16 + g + 8};
  float dka[OT][4], dva[OT][4];
#pragma unroll
  for (int i = 0; i < OT; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[i][e] = dva[i][e] = 0.f;
  }
  // the query rows that see any key of this block
  int q_begin = 0, q_end = p.T;
  if (p.causal) {
    q_begin = max(0, key0 - p.offset);
    if (p.window > 0) q_end = min(p.T, key0 + BWD_BC - 1 + p.window - p.offset);
  }
  q_begin = (q_begin / BWD_BR) * BWD_BR;
  for (int hq = 0; hq < rep; ++hq) {
    const int h = kvh * rep + hq;
    const long long bh = (long long)b * p.H + h;
    const T *qb = q + b * p.qsb + h * p.qsh;
    const T *gb = go + b * io.gsb + h * io.gsh;
    for (int i0 = q_begin; i0 < q_end; i0 += BWD_BR) {
      __syncthreads();  // the previous step's tiles are no longer read (and K / V are in place)
      for (int c = tid; c < BWD_BR * CH; c += WARPS * 32) {
        int r = c / CH, col = (c % CH) * 8;
        uint4 qx = make_uint4(0, 0, 0, 0), gx = make_uint4(0, 0, 0, 0);
        if (i0 + r < p.T) {
          qx = *reinterpret_cast<const uint4 *>(qb + (long long)(i0 + r) * p.qsr + col);
          gx = *reinterpret_cast<const uint4 *>(gb + (long long)(i0 + r) * io.gsr + col);
        }
        *reinterpret_cast<uint4 *>(Qs + r * LD + col) = qx;
        *reinterpret_cast<uint4 *>(Gs + r * LD + col) = gx;
      }
      for (int c = tid; c < BWD_BR; c += WARPS * 32) {
        bool in = i0 + c < p.T;
        lse_s[c] = in ? lse[bh * p.T + i0 + c] : -INFINITY;
        dd_s[c] = in ? dd[bh * p.T + i0 + c] : 0.f;
      }
      __syncthreads();
      // dP^T = V dO^T and S^T = K Q^T for this warp's 16 keys x 64 queries
      float dp[NQ][4], s[NQ][4];
#pragma unroll
      for (int nq = 0; nq < NQ; ++nq) {
#pragma unroll
        for (int e = 0; e < 4; ++e) dp[nq][e] = s[nq][e] = 0.f;
      }
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) {
        uint32_t av[4], ak[4];
        const T *vs = Vs + (warp * 16) * LD + kk * 16 + 2 * t;
        const T *ks = Ks + (warp * 16) * LD + kk * 16 + 2 * t;
        av[0] = *reinterpret_cast<const uint32_t *>(vs + g * LD);
        av[1] = *reinterpret_cast<const uint32_t *>(vs + (g + 8) * LD);
        av[2] = *reinterpret_cast<const uint32_t *>(vs + g * LD + 8);
        av[3] = *reinterpret_cast<const uint32_t *>(vs + (g + 8) * LD + 8);
        ak[0] = *reinterpret_cast<const uint32_t *>(ks + g * LD);
        ak[1] = *reinterpret_cast<const uint32_t *>(ks + (g + 8) * LD);
        ak[2] = *reinterpret_cast<const uint32_t *>(ks + g * LD + 8);
        ak[3] = *reinterpret_cast<const uint32_t *>(ks + (g + 8) * LD + 8);
#pragma unroll
        for (int nq = 0; nq < NQ; ++nq) {
          const T *gr = Gs + (nq * 8 + g) * LD + kk * 16 + 2 * t;
          const T *qr = Qs + (nq * 8 + g) * LD + kk * 16 + 2 * t;
          mma16816<T>(dp[nq], av, *reinterpret_cast<const uint32_t *>(gr), *reinterpret_cast<const uint32_t *>(gr + 8));
          mma16816<T>(s[nq], ak, *reinterpret_cast<const uint32_t *>(qr), *reinterpret_cast<const uint32_t *>(qr + 8));
        }
      }
      // P^T and dS^T; element (key krow[e / 2], query i0 + nq * 8 + 2t + (e & 1))
#pragma unroll
      for (int nq = 0; nq < NQ; ++nq) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = krow[e / 2], c = nq * 8 + 2 * t + (e & 1), qi = i0 + c;
          float x = s[nq][e] * p.scale, dcap = 1.f;
          if (p.softcap > 0.f) {
            const float th = tanhf(x / p.softcap);
            x = p.softcap * th;
            dcap = 1.f - th * th;
          }
          bool ok = key < p.S && qi < p.T;
          if (p.causal) {
            int pos = p.offset + qi;
            ok = ok && key <= pos && (p.window <= 0 || pos - key < p.window);
          }
          const float lv = lse_s[c];
          const float pr = (ok && lv != -INFINITY) ? expf(x - lv) : 0.f;
          s[nq][e] = pr;
          dp[nq][e] = pr * (dp[nq][e] - dd_s[c]) * dcap;
        }
      }
      // dV += P^T dO, dK += dS^T Q: A from the registers (two 8-query tiles = one 16-query step),
      // B = dO / Q rows by ldmatrix.trans (as V in flash_fwd)
#pragma unroll
      for (int kk = 0; kk < BWD_BR / 16; ++kk) {
        uint32_t ap[4], as[4];
        ap[0] = Pack<T>::two(s[2 * kk][0], s[2 * kk][1]);
        ap[1] = Pack<T>::two(s[2 * kk][2], s[2 * kk][3]);
        ap[2] = Pack<T>::two(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        ap[3] = Pack<T>::two(s[2 * kk + 1][2], s[2 * kk + 1][3]);
        as[0] = Pack<T>::two(dp[2 * kk][0], dp[2 * kk][1]);
        as[1] = Pack<T>::two(dp[2 * kk][2], dp[2 * kk][3]);
        as[2] = Pack<T>::two(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
        as[3] = Pack<T>::two(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
        for (int ot = 0; ot < OT; ot += 2) {
          const int off = (kk * 16 + (mat & 1) * 8 + rr) * LD + (ot + (mat >> 1)) * 8;
          uint32_t bg[4], bq[4];
          ldmatrix_x4_trans(bg, Gs + off);
          ldmatrix_x4_trans(bq, Qs + off);
          mma16816<T>(dva[ot], ap, bg[0], bg[1]);
          mma16816<T>(dva[ot + 1], ap, bg[2], bg[3]);
          mma16816<T>(dka[ot], as, bq[0], bq[1]);
          mma16816<T>(dka[ot + 1], as, bq[2], bq[3]);
        }
      }
      // dS^T to shared: rows key (local), columns query (local)
#pragma unroll
      for (int nq = 0; nq < NQ; ++nq) {
        *reinterpret_cast<uint32_t *>(St + (warp * 16 + g) * LDS + nq * 8 + 2 * t) = Pack<T>::two(dp[nq][0], dp[nq][1]);
        *reinterpret_cast<uint32_t *>(St + (warp * 16 + g + 8) * LDS + nq * 8 + 2 * t) =
            Pack<T>::two(dp[nq][2], dp[nq][3]);
      }
      __syncthreads();
      // dQ of query rows i0 + warp * 16 .. + 16: A = dS (query x key) by ldmatrix.trans from dS^T,
      // B = K rows by ldmatrix.trans
      float dqa[OT][4];
#pragma unroll
      for (int i = 0; i < OT; ++i) dqa[i][0] = dqa[i][1] = dqa[i][2] = dqa[i][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < BWD_BC / 16; ++kk) {
        uint32_t a[4];
        // matrices a0 (query 0-7, key 0-7), a1 (query 8-15, key 0-7), a2 (query 0-7, key 8-15),
        // a3 (query 8-15, key 8-15) of this warp's rows; lane l: key row l % 8 of matrix l / 8
        ldmatrix_x4_trans(a, St + (kk * 16 + (mat >> 1) * 8 + rr) * LDS + warp * 16 + (mat & 1) * 8);
#pragma unroll
        for (int ot = 0; ot < OT; ot += 2) {
          uint32_t bk[4];
          ldmatrix_x4_trans(bk, Ks + (kk * 16 + (mat & 1) * 8 + rr) * LD + (ot + (mat >> 1)) * 8);
          mma16816<T>(dqa[ot], a, bk[0], bk[1]);
          mma16816<T>(dqa[ot + 1], a, bk[2], bk[3]);
        }
      }
      float *dqh = dq + bh * (long long)p.T * D;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int qi = i0 + warp * 16 + g + 8 * r;
        if (qi >= p.T) continue;
#pragma unroll
        for (int ot = 0; ot < OT; ++ot) {
          atomicAdd(dqh + (long long)qi * D + ot * 8 + 2 * t, dqa[ot][2 * r]);
          atomicAdd(dqh + (long long)qi * D + ot * 8 + 2 * t + 1, dqa[ot][2 * r + 1]);
        }
      }
    }
  }
  const long long kvbase = ((long long)b * p.KV + kvh) * p.S;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (krow[r] >= p.S) continue;
#pragma unroll
    for (int ot = 0; ot < OT; ++ot) {
      const long long at = (kvbase + krow[r]) * D + ot * 8 + 2 * t;
      dk[at] = dka[ot][2 * r];
      dk[at + 1] = dka[ot][2 * r + 1];
      dv[at] = dva[ot][2 * r];
      dv[at + 1] = dva[ot][2 * r + 1];
    }
  }
}

#define FLASH_BWD_KERNELS(SUF, TY, D)                                                                   \
  extern "C" __global__ void __launch_bounds__(WARPS * 32) flash_bwd_prep_##SUF##_d##D(                 \
      const TY *q, const TY *k, const TY *o, const TY *go, float *lse, float *dd, const Params p,       \
      const BwdIo io) {                                                                                  \
    flash_bwd_prep<TY, D>(q, k, o, go, lse, dd, p, io);                                                  \
  }                                                                                                      \
  extern "C" __global__ void __launch_bounds__(WARPS * 32) flash_bwd_##SUF##_d##D(                      \
      const TY *q, const TY *k, const TY *v, const TY *go, const float *lse, const float *dd, float *dq, \
      float *dk, float *dv, const Params p, const BwdIo io) {                                            \
    flash_bwd<TY, D>(q, k, v, go, lse, dd, dq, dk, dv, p, io);                                           \
  }
FLASH_BWD_KERNELS(bf16, __nv_bfloat16, 32)
FLASH_BWD_KERNELS(bf16, __nv_bfloat16, 64)
FLASH_BWD_KERNELS(f16, __half, 32)
FLASH_BWD_KERNELS(f16, __half, 64)
