// Fused elementwise / row kernels for bf16 / f16 inference on NVIDIA GPUs (src/fused.rs). Each
// replaces a chain of candle kernels that the profile of session 8 (docs/PERFORMANCE.md) found
// costly at 1022 px and in the 1429-token prefill:
//   norm_*       RMSNorm / LayerNorm of a row in f32 with f32 parameters, one rounding at the end
//                (was: cast to f32, candle's f32 norm, cast back: three passes and kernels);
//   gated_act_*  act(gate) * up from the fused gate/up projection's output [rows, 2I] (was: an
//                activation and a product over strided views, about 9 times slower than the
//                memory allows);
//   bias_act_*   y = act(y + bias) in place after a matmul (was: a broadcast add, then one to
//                three kernels for the activation).
// Activations (codes as in src/fused.rs): 0 none, 1 quick_gelu x*sigmoid(1.702x), 2 exact GELU
// 0.5x(1+erf(x/sqrt2)), 3 tanh GELU 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3))), 4 silu x*sigmoid(x),
// 5 relu; evaluated in f32 (PyTorch evaluates them in f32 for bf16 tensors too).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }

__device__ __forceinline__ float act_f(float x, int act) {
  switch (act) {
    case 1: return x / (1.f + expf(-1.702f * x));
    case 2: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case 3: {
      float inner = 0.79788456080286536f * (x + 0.044715f * x * x * x);
      return 0.5f * x * (1.f + tanhf(inner));
    }
    case 4: return x / (1.f + expf(-x));
    case 5: return fmaxf(x, 0.f);
    default: return x;
  }
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float *red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float s = lane < nw ? red[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
  return s;
}

// One block per row of x [rows, C] (row stride xs elements); out [rows, C] contiguous.
// centered (LayerNorm): y = (x - mean) / sqrt(var + eps) * scale + shift (var biased, two passes);
// else (RMSNorm): y = x / sqrt(mean(x^2) + eps) * scale. scale / shift are f32; shift may be null.
// With `res` (same shape, contiguous) the result is res + y, each rounded to T as the reference's
// `residual + norm(x)` on bf16 tensors is (a post-norm followed by the residual add).
template <typename T>
__device__ void norm_row(const T *__restrict__ x, long long xs, const float *__restrict__ scale,
                         const float *__restrict__ shift, const T *__restrict__ res, T *__restrict__ out, int C,
                         float eps, int centered) {
  __shared__ float red[32];
  const long long row = blockIdx.x;
  const T *xr = x + row * xs;
  T *yr = out + row * (long long)C;
  float mean = 0.f;
  if (centered) {
    float s = 0.f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += to_f(xr[i]);
    mean = block_sum(s, red) / C;
  }
  float q = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    float d = to_f(xr[i]) - mean;
    q += d * d;
  }
  const float rstd = rsqrtf(block_sum(q, red) / C + eps);
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    float y = (to_f(xr[i]) - mean) * rstd * scale[i];
    if (shift) y += shift[i];
    if (res) y = to_f(res[row * (long long)C + i]) + to_f(from_f<T>(y));
    yr[i] = from_f<T>(y);
  }
}

// The same norm with the row held in registers (PER values per thread, C <= PER * blockDim.x):
// one read of x instead of three. A variant for measurement (GRIFFON_NORM=regs, src/fused.rs):
// session 8's profile found the single-row norms of a decode step latency-bound (9 us each).
template <typename T, int PER>
__device__ void norm_row_regs(const T *__restrict__ x, long long xs, const float *__restrict__ scale,
                              const float *__restrict__ shift, const T *__restrict__ res, T *__restrict__ out, int C,
                              float eps, int centered) {
  __shared__ float red[32];
  const long long row = blockIdx.x;
  const T *xr = x + row * xs;
  T *yr = out + row * (long long)C;
  float v[PER];
#pragma unroll
  for (int e = 0; e < PER; ++e) {
    int i = threadIdx.x + e * blockDim.x;
    v[e] = i < C ? to_f(xr[i]) : 0.f;
  }
  float mean = 0.f;
  if (centered) {
    float s = 0.f;
#pragma unroll
    for (int e = 0; e < PER; ++e) s += v[e];
    mean = block_sum(s, red) / C;
  }
  float q = 0.f;
#pragma unroll
  for (int e = 0; e < PER; ++e) {
    int i = threadIdx.x + e * blockDim.x;
    float d = i < C ? v[e] - mean : 0.f;
    q += d * d;
  }
  const float rstd = rsqrtf(block_sum(q, red) / C + eps);
#pragma unroll
  for (int e = 0; e < PER; ++e) {
    int i = threadIdx.x + e * blockDim.x;
    if (i >= C) continue;
    float y = (v[e] - mean) * rstd * scale[i];
    if (shift) y += shift[i];
    if (res) y = to_f(res[row * (long long)C + i]) + to_f(from_f<T>(y));
    yr[i] = from_f<T>(y);
  }
}

// gu [rows, 2I] contiguous (gate then up) -> out [rows, I]: round(act(gate)) * up, rounded, as
// the reference's `act_fn(gate_proj(x)) * up_proj(x)` on bf16 tensors.
// Elementwise kernels: grid (column blocks, row blocks); rows loop by gridDim.y (no 64-bit
// division per element).
template <typename T>
__device__ void gated_act(const T *__restrict__ gu, T *__restrict__ out, long long rows, int I, int act) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= I) return;
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    float g = to_f(gu[r * 2 * I + j]);
    float u = to_f(gu[r * 2 * I + I + j]);
    float a = to_f(from_f<T>(act_f(g, act)));
    out[r * I + j] = from_f<T>(a * u);
  }
}

// y [rows, N] contiguous, in place: act(y + bias[j]), and with `res` (same shape, contiguous)
// res + that, each rounded to T (the reference's `residual + linear(x)` on bf16 tensors).
template <typename T>
__device__ void bias_act(T *__restrict__ y, const T *__restrict__ bias, const T *__restrict__ res, long long rows,
                         int N, int act) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= N) return;
  const float b = to_f(bias[j]);
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    float v = act_f(to_f(y[r * N + j]) + b, act);
    if (res) v = to_f(res[r * N + j]) + to_f(from_f<T>(v));
    y[r * N + j] = from_f<T>(v);
  }
}

// Two-wide forms of gated_act / bias_act (bf16x2 / half2 loads and stores; I, N even): variants
// for measurement (GRIFFON_FUSED_VEC=1, src/fused.rs), the same arithmetic per element.
template <typename T> struct Two;
template <> struct Two<__nv_bfloat16> {
  typedef __nv_bfloat162 V;
  static __device__ __forceinline__ float2 get(V v) { return __bfloat1622float2(v); }
  static __device__ __forceinline__ V make(float a, float b) { return __floats2bfloat162_rn(a, b); }
};
template <> struct Two<__half> {
  typedef __half2 V;
  static __device__ __forceinline__ float2 get(V v) { return __half22float2(v); }
  static __device__ __forceinline__ V make(float a, float b) { return __floats2half2_rn(a, b); }
};
__device__ __forceinline__ float round_bf(float x, __nv_bfloat16 *) { return __bfloat162float(__float2bfloat16(x)); }
__device__ __forceinline__ float round_bf(float x, __half *) { return __half2float(__float2half(x)); }

template <typename T>
__device__ void gated_act2(const T *__restrict__ gu, T *__restrict__ out, long long rows, int I, int act) {
  typedef typename Two<T>::V V;
  const int j2 = blockIdx.x * blockDim.x + threadIdx.x;  // pair index
  if (2 * j2 >= I) return;
  const V *g2 = reinterpret_cast<const V *>(gu);
  V *o2 = reinterpret_cast<V *>(out);
  const int half_row = I / 2;  // pairs per half row
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    float2 g = Two<T>::get(g2[r * 2 * half_row + j2]);
    float2 u = Two<T>::get(g2[r * 2 * half_row + half_row + j2]);
    float a0 = round_bf(act_f(g.x, act), (T *)0), a1 = round_bf(act_f(g.y, act), (T *)0);
    o2[r * half_row + j2] = Two<T>::make(a0 * u.x, a1 * u.y);
  }
}

template <typename T>
__device__ void bias_act2(T *__restrict__ y, const T *__restrict__ bias, const T *__restrict__ res, long long rows,
                          int N, int act) {
  typedef typename Two<T>::V V;
  const int j2 = blockIdx.x * blockDim.x + threadIdx.x;
  if (2 * j2 >= N) return;
  V *y2 = reinterpret_cast<V *>(y);
  const V *r2 = reinterpret_cast<const V *>(res);
  const float2 b = Two<T>::get(reinterpret_cast<const V *>(bias)[j2]);
  const int n2 = N / 2;
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    float2 v = Two<T>::get(y2[r * n2 + j2]);
    float v0 = act_f(v.x + b.x, act), v1 = act_f(v.y + b.y, act);
    if (res) {
      float2 rr = Two<T>::get(r2[r * n2 + j2]);
      v0 = rr.x + round_bf(v0, (T *)0);
      v1 = rr.y + round_bf(v1, (T *)0);
    }
    y2[r * n2 + j2] = Two<T>::make(v0, v1);
  }
}

// The fused q / k / v projection's output y [B * T, (H + 2 KV) * D] -> one buffer holding
// q [B, H, T, D], then k [B, KV, T, D], then v [B, KV, T, D], with the rotary embedding applied to
// q and k (HF `rotate_half` form: out[i] = x[i] cos[i] - x[i + D/2] sin[i], out[i + D/2] =
// x[i + D/2] cos[i] + x[i] sin[i], cos / sin [T, D/2] of the positions), each product and the sum
// rounded to T as the reference's bf16 `q * cos + rotate_half(q) * sin` is. Grid (B * T, H + 2 KV),
// D / 2 threads. (was: three copies out of the strided views, two rope kernels)
template <typename T>
__device__ void qkv_rope(const T *__restrict__ y, const T *__restrict__ cs, const T *__restrict__ sn,
                         T *__restrict__ out, int Tn, int H, int KV, int D) {
  const int bt = blockIdx.x, hh = blockIdx.y, i = threadIdx.x, half = D / 2;
  const int b = bt / Tn, t = bt % Tn;
  const int width = (H + 2 * KV) * D;
  const T *src = y + (long long)bt * width + hh * D;
  const long long B = gridDim.x / Tn;
  T *dst;
  if (hh < H) {
    dst = out + (((long long)b * H + hh) * Tn + t) * D;
  } else if (hh < H + KV) {
    dst = out + B * H * Tn * D + (((long long)b * KV + (hh - H)) * Tn + t) * D;
  } else {
    dst = out + B * (H + KV) * Tn * D + (((long long)b * KV + (hh - H - KV)) * Tn + t) * D;
  }
  const T x1 = src[i], x2 = src[i + half];
  if (hh >= H + KV) {
    dst[i] = x1;
    dst[i + half] = x2;
    return;
  }
  const float c = to_f(cs[t * half + i]), s = to_f(sn[t * half + i]);
  const float a1 = to_f(from_f<T>(to_f(x1) * c)), b1 = to_f(from_f<T>(to_f(x2) * s));
  const float a2 = to_f(from_f<T>(to_f(x2) * c)), b2 = to_f(from_f<T>(to_f(x1) * s));
  dst[i] = from_f<T>(a1 - b1);
  dst[i + half] = from_f<T>(a2 + b2);
}

// Eight T values of a 16-byte load as f32.
__device__ __forceinline__ void unpack8(uint4 v, float *f, __nv_bfloat16 *) {
  const unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    f[2 * j] = __uint_as_float(u[j] << 16);  // the lower half is the earlier element
    f[2 * j + 1] = __uint_as_float(u[j] & 0xffff0000u);
  }
}
__device__ __forceinline__ void unpack8(uint4 v, float *f, __half *) {
  const unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    __half2 h;
    memcpy(&h, &u[j], 4);
    const float2 p = __half22float2(h);
    f[2 * j] = p.x;
    f[2 * j + 1] = p.y;
  }
}

// A decode step's RMSNorm folded into the matmul that reads it (GRIFFON_NORM_GEMV, src/fused.rs):
// y [rows, N] = a W^T with W [N, K] contiguous and a = round(rmsnorm(h; s2, eps2)) (s2 == null:
// a = h, a plain product), where
//   res == null: h = x (the residual stream itself; h_out unused);
//   res != null: h = round(res + round(rmsnorm(x; s1, eps1))) (Gemma-2's post-norm and residual
//                add), or h = round(res + x) when s1 == null (Llama's residual add); block 0 also
//                writes h to h_out [rows, K] (the stream the next residual add reads).
// Each rounding is the reference's bf16 tensor op (the same arithmetic as norm_row); the products
// are exact in f32 and summed in f32, as cuBLAS does, in another order. rows <= 4, K % 8 == 0,
// rows * K values of T in dynamic shared memory (every value there is already rounded to T).
// Every block recomputes the norm of the (L2-resident) input rows, then each warp computes NG_OPW
// outputs with 16-byte loads of W: the norm kernels of a decode step were 169 single-row
// launches of about 9 us each (docs/PERFORMANCE.md).
#define NG_OPW 4
template <typename T>
__device__ void norm_gemv(const T *__restrict__ x, const T *__restrict__ res, const float *__restrict__ s1, float eps1,
                          const float *__restrict__ s2, float eps2, const T *__restrict__ w, T *__restrict__ h_out,
                          T *__restrict__ y, int rows, int K, int N) {
  extern __shared__ uint4 a_shared[];
  T *a = reinterpret_cast<T *>(a_shared);
  __shared__ float red[32];
  for (int r = 0; r < rows; ++r) {
    const T *xr = x + (long long)r * K;
    T *ar = a + (long long)r * K;
    if (res) {
      const T *rr = res + (long long)r * K;
      float rstd1 = 1.f;
      if (s1) {
        float q = 0.f;
        for (int i = threadIdx.x; i < K; i += blockDim.x) {
          const float v = to_f(xr[i]);
          q += v * v;
        }
        rstd1 = rsqrtf(block_sum(q, red) / K + eps1);
      }
      for (int i = threadIdx.x; i < K; i += blockDim.x) {
        const float v = to_f(xr[i]);
        const float p = s1 ? to_f(from_f<T>(v * rstd1 * s1[i])) : v;
        const T h = from_f<T>(to_f(rr[i]) + p);
        ar[i] = h;
        if (blockIdx.x == 0) h_out[(long long)r * K + i] = h;
      }
    } else {
      for (int i = threadIdx.x; i < K; i += blockDim.x) ar[i] = xr[i];
    }
    if (s2) {
      // each thread reads back only the entries it wrote until the barrier before the products
      float q = 0.f;
      for (int i = threadIdx.x; i < K; i += blockDim.x) {
        const float v = to_f(ar[i]);
        q += v * v;
      }
      const float rstd = rsqrtf(block_sum(q, red) / K + eps2);
      for (int i = threadIdx.x; i < K; i += blockDim.x) ar[i] = from_f<T>(to_f(ar[i]) * rstd * s2[i]);
    }
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  const int k8 = K / 8;
  for (long long n0 = ((long long)blockIdx.x * nw + warp) * NG_OPW; n0 < N; n0 += (long long)gridDim.x * nw * NG_OPW) {
    float acc[NG_OPW][4];
#pragma unroll
    for (int o = 0; o < NG_OPW; ++o)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[o][r] = 0.f;
    for (int c = lane; c < k8; c += 32) {
      uint4 wv[NG_OPW];
#pragma unroll
      for (int o = 0; o < NG_OPW; ++o) {
        const long long n = n0 + o;
        wv[o] = n < N ? __ldg(reinterpret_cast<const uint4 *>(w + n * K) + c) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        if (r >= rows) break;
        float av[8];
        unpack8(a_shared[((long long)r * K) / 8 + c], av, (T *)0);
#pragma unroll
        for (int o = 0; o < NG_OPW; ++o) {
          float wf[8];
          unpack8(wv[o], wf, (T *)0);
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[o][r] += av[j] * wf[j];
        }
      }
    }
#pragma unroll
    for (int o = 0; o < NG_OPW; ++o) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        float v = acc[o][r];
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffff, v, off);
        const long long n = n0 + o;
        if (lane == 0 && r < rows && n < N) y[(long long)r * N + n] = from_f<T>(v);
      }
    }
  }
}

#define FUSED_KERNELS(SUF, TY)                                                                                   \
  extern "C" __global__ void norm_##SUF(const TY *x, long long xs, const float *scale, const float *shift,      \
                                        const TY *res, TY *out, int C, float eps, int centered) {                \
    norm_row<TY>(x, xs, scale, shift, res, out, C, eps, centered);                                               \
  }                                                                                                              \
  extern "C" __global__ void norm_regs_##SUF(const TY *x, long long xs, const float *scale, const float *shift, \
                                             const TY *res, TY *out, int C, float eps, int centered) {           \
    norm_row_regs<TY, 8>(x, xs, scale, shift, res, out, C, eps, centered);                                       \
  }                                                                                                              \
  extern "C" __global__ void gated_act_##SUF(const TY *gu, TY *out, long long rows, int I, int act) {           \
    gated_act<TY>(gu, out, rows, I, act);                                                                        \
  }                                                                                                              \
  extern "C" __global__ void bias_act_##SUF(TY *y, const TY *bias, const TY *res, long long rows, int N,        \
                                            int act) {                                                           \
    bias_act<TY>(y, bias, res, rows, N, act);                                                                    \
  }                                                                                                              \
  extern "C" __global__ void gated_act2_##SUF(const TY *gu, TY *out, long long rows, int I, int act) {          \
    gated_act2<TY>(gu, out, rows, I, act);                                                                       \
  }                                                                                                              \
  extern "C" __global__ void bias_act2_##SUF(TY *y, const TY *bias, const TY *res, long long rows, int N,       \
                                             int act) {                                                          \
    bias_act2<TY>(y, bias, res, rows, N, act);                                                                   \
  }                                                                                                              \
  extern "C" __global__ void qkv_rope_##SUF(const TY *y, const TY *cs, const TY *sn, TY *out, int Tn, int H,    \
                                            int KV, int D) {                                                     \
    qkv_rope<TY>(y, cs, sn, out, Tn, H, KV, D);                                                                  \
  }                                                                                                              \
  extern "C" __global__ void norm_gemv_##SUF(const TY *x, const TY *res, const float *s1, float eps1,            \
                                             const float *s2, float eps2, const TY *w, TY *h_out, TY *y,        \
                                             int rows, int K, int N) {                                           \
    norm_gemv<TY>(x, res, s1, eps1, s2, eps2, w, h_out, y, rows, K, N);                                          \
  }

FUSED_KERNELS(bf16, __nv_bfloat16)
FUSED_KERNELS(f16, __half)
