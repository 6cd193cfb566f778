/* hamode's float32 <-> bfloat16 passes (see hamode/native.py): the image fields' reduced-precision convolutions
   (conv_dtype="bfloat16") return their products in bfloat16 while sigma, the state, its update and every gradient
   stay float32. Written as torch calls, each product costs a conversion pass to float32, the elementwise pass, and
   (where the next product needs it) a conversion pass back; these kernels do the three in one pass:

   hamode_tanh_bf16:    s = tanh(z), s16 = bf16(s)                 (z: the product K x + b, bfloat16)
   hamode_axpy_bf16:    out = base + alpha x  (or alpha x)         (x: the product K^T s, bfloat16)
   hamode_tanh_bw_bf16: gz = p (1 - s^2), gz16 = bf16(gz)          (p: the product K c, bfloat16)

   Widening bfloat16 is exact; narrowing rounds to nearest even (NaN -> a quiet NaN), as torch's conversion does.
   Compiled with -ffp-contract=off, the fused multiply-adds written out where torch's vectorised kernels use them
   (base + alpha x in add with alpha; 1 - s^2 in tanh_backward), so each pass equals the torch calls it replaces
   (tested), tanh aside (hamode's, within 2.5 ulp: tanh.c). */
#include "tanh.c"

static inline float from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint16_t r = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return f != f ? (uint16_t)0x7fc0 : r;
}

#ifdef _OPENMP
#define PARALLEL_LOOP _Pragma("omp parallel for simd schedule(static) num_threads(threads) if (parallel : threads > 1 && n >= PARALLEL_FROM)")
#else
#define PARALLEL_LOOP _Pragma("omp simd")
#endif

void hamode_tanh_bf16(long n, const uint16_t *z, float *s, uint16_t *s16, int threads)
{
    (void)threads;
    PARALLEL_LOOP
    for (long i = 0; i < n; ++i) {
        float v = tanh_one(from_bf16(z[i]));
        s[i] = v;
        s16[i] = to_bf16(v);
    }
}

void hamode_axpy_bf16(long n, const float *base, const uint16_t *x, float alpha, float *out, int threads)
{
    (void)threads;
    if (base) {
        PARALLEL_LOOP
        for (long i = 0; i < n; ++i) out[i] = __builtin_fmaf(alpha, from_bf16(x[i]), base[i]);
    } else {
        PARALLEL_LOOP
        for (long i = 0; i < n; ++i) out[i] = alpha * from_bf16(x[i]);
    }
}

void hamode_tanh_bw_bf16(long n, const uint16_t *p, const float *s, float *gz, uint16_t *gz16, int threads)
{
    (void)threads;
    PARALLEL_LOOP
    for (long i = 0; i < n; ++i) {
        float g = from_bf16(p[i]) * __builtin_fmaf(-s[i], s[i], 1.0f);
        gz[i] = g;
        gz16[i] = to_bf16(g);
    }
}
