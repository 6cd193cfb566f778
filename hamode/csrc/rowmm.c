/* hamode's row-wise small matrix products (see hamode/native.py):

       hamode_rowmm:        out[r] = base[r] + alpha (x[r] W + bias)                        for r < R
       hamode_rowvjp_sums:  out[r] = base[r] + alpha ((c[r] W1) ⊙ σ'(s[r])) W2, and the factor sums
       hamode_rowgram:      out = Aᵀ B

   x (R, K) with rows `ldx` apart, W (K, C) with strides (wk, wc), bias (C,) with stride `sb` or NULL, base (R, C)
   with rows `ldb` apart or NULL (then 0), out (R, C) contiguous and distinct from x and base. One pass over the
   rows: each row of x is read once, each row of out written once, W and bias sit in registers.

   Compiled per (T, K, C) with -DDOUBLE=0|1 (T float or double) -DK=.. -DC=..: the product is then a fixed chain of K
   vector multiply-adds on a row of C (padded to a power of two, the padding lanes zero and never stored).
   With -fopenmp the rows are shared over `threads` threads of the OpenMP runtime torch itself runs on. */
#include <string.h>

#if !defined(DOUBLE) || !defined(K) || !defined(C)
#error "compile with -DDOUBLE=0|1 -DK=<inner size> -DC=<columns>"
#endif
#if DOUBLE
#define T double
#else
#define T float
#endif

#define PAD(n) ((n) <= 1 ? 1 : (n) <= 2 ? 2 : (n) <= 4 ? 4 : (n) <= 8 ? 8 : (n) <= 16 ? 16 : (n) <= 32 ? 32 : 64)
#define CP PAD(C)

typedef T vec __attribute__((vector_size(CP * sizeof(T))));     /* a row of C, padded */
typedef T veck __attribute__((vector_size(PAD(K) * sizeof(T)))); /* a row of K, padded */

/* dst[i] = row i of the (rows, cols) matrix M with strides (s0, s1), as a vector of type vt (padding lanes 0) */
#define LOAD_ROWS(vt, dst, rows, cols, M, s0, s1)                                                                   \
    for (int i_ = 0; i_ < (rows); ++i_) {                                                                          \
        vt v_ = {0};                                                                                               \
        for (int j_ = 0; j_ < (cols); ++j_) v_[j_] = (M)[i_ * (s0) + j_ * (s1)];                                 \
        (dst)[i_] = v_;                                                                                            \
    }

/* out_row = base[at..] + alpha acc (alpha acc where base is NULL): the first n lanes of a vector of type vt */
#define STORE_UPDATE(vt, n, acc, alpha, base, at, out_row)                                                         \
    do {                                                                                                           \
        vt res_ = (acc) * (alpha);                                                                                 \
        if (base) {                                                                                                \
            vt bv_ = {0};                                                                                          \
            memcpy(&bv_, (base) + (at), (n) * sizeof(T));                                                         \
            res_ = bv_ + res_;                                                                                     \
        }                                                                                                          \
        memcpy((out_row), &res_, (n) * sizeof(T));                                                                 \
    } while (0)

void hamode_rowmm(long R, const T *restrict x, long ldx, const T *restrict W, long wk, long wc,
                  const T *restrict bias, long sb, T alpha, const T *restrict base, long ldb,
                  T *restrict out, int threads)
{
    vec w[K];
    vec b0 = {0};
    LOAD_ROWS(vec, w, K, C, W, wk, wc);
    if (bias)
        for (int c = 0; c < C; ++c) b0[c] = bias[c * sb];
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (long r = 0; r < R; ++r) {
        const T *xr = x + r * ldx;
        vec acc = b0;
        for (int k = 0; k < K; ++k) acc += xr[k] * w[k];
        STORE_UPDATE(vec, C, acc, alpha, base, r * ldb, out + r * C);
    }
}

/* out = Aᵀ B for A (R, C) rows `lda` apart and B (R, K) rows `ldb` apart: out (C, K) contiguous. Each thread sums
   its own block of rows; the blocks' sums are then added in block order, so the result depends on the thread
   count only, never on the threads' timing. `partial` holds threads x C x K scratch values. */
void hamode_rowgram(long R, const T *restrict A, long lda, const T *restrict B, long ldb, T *restrict out,
                    T *restrict partial, int threads)
{
    if (threads < 1) threads = 1;
#pragma omp parallel for schedule(static, 1) num_threads(threads) if (threads > 1)
    for (int t = 0; t < threads; ++t) {
        long lo = R * t / threads, hi = R * (t + 1) / threads;
        veck total[C];
        for (int j = 0; j < C; ++j) total[j] = (veck){0};
        for (long r0 = lo; r0 < hi; r0 += 256) { /* blocks of 256 rows, then the blocks' sums: less rounding */
            long r1 = r0 + 256 < hi ? r0 + 256 : hi;
            veck acc[C];
            for (int j = 0; j < C; ++j) acc[j] = (veck){0};
            for (long r = r0; r < r1; ++r) {
                const T *ar = A + r * lda;
                veck bv = {0};
                memcpy(&bv, B + r * ldb, K * sizeof(T));
                for (int j = 0; j < C; ++j) acc[j] += ar[j] * bv;
            }
            for (int j = 0; j < C; ++j) total[j] += acc[j];
        }
        for (int j = 0; j < C; ++j) memcpy(partial + ((long)t * C + j) * K, &total[j], K * sizeof(T));
    }
    for (int j = 0; j < C; ++j)
        for (int k = 0; k < K; ++k) {
            T sum = 0;
            for (int t = 0; t < threads; ++t) sum += partial[((long)t * C + j) * K + k];
            out[j * K + k] = sum;
        }
}

/* The VJP of an evaluation σ(y A + b) B (A (K, C), B (C, K)) and its parameter factors summed over the rows, from
   σ's output s: with gz = (c W1) ⊙ σ'(s), W1 = Bᵀ (K, C), W2 = Aᵀ (C, K), writes out = base + alpha gz W2 (R, K),
   sc = sᵀ c (C, K), gy = gzᵀ y (C, K) and gs = Σ_r gz[r] (C); gz itself is never stored. c, y, base (R, K) and
   s (R, C) have rows `ldc`, `ldy`, `ldb`, `lds` apart; base may be NULL. act: 0 tanh (1 - s²), 1 sigmoid
   (s (1 - s)), 2 relu (s > 0). Sums as in hamode_rowgram: per block of rows, fixed blocks per thread, added in
   order (a block here: BLOCK rows). `partial` holds threads x (2 C K + C) scratch values. */
#define BLOCK (1024 / CP > 16 ? 1024 / CP : 16) /* rows per block: its gz (BLOCK x CP values) stays in L1 */

void hamode_rowvjp_sums(long R, const T *restrict c, long ldc, const T *restrict W1, long w1k, long w1c,
                        const T *restrict s, long lds, int act, const T *restrict W2, long w2c, long w2k,
                        T alpha, const T *restrict base, long ldb, const T *restrict y, long ldy,
                        T *restrict out, T *restrict sc, T *restrict gy, T *restrict gs, T *restrict partial,
                        int threads)
{
    vec w1[K];
    veck w2[C];
    LOAD_ROWS(vec, w1, K, C, W1, w1k, w1c);
    LOAD_ROWS(veck, w2, C, K, W2, w2c, w2k);
    if (threads < 1) threads = 1;
    const long stride = 2L * C * K + C;
#pragma omp parallel for schedule(static, 1) num_threads(threads) if (threads > 1)
    for (int t = 0; t < threads; ++t) {
        long lo = R * t / threads, hi = R * (t + 1) / threads;
        veck tsc[C], tgy[C];
        vec tgs = {0};
        vec gbuf[BLOCK];
        for (int j = 0; j < C; ++j) tsc[j] = tgy[j] = (veck){0};
        /* per block: the VJP rows (gz kept in gbuf), then each sum in its own sweep over the block, whose rows
           are still in the cache: few live vectors per loop, so nothing spills */
        for (long r0 = lo; r0 < hi; r0 += BLOCK) {
            long n = r0 + BLOCK < hi ? BLOCK : hi - r0;
            for (long i = 0; i < n; ++i) {
                long r = r0 + i;
                const T *cr = c + r * ldc;
                vec g = {0}, sv = {0};
                for (int k = 0; k < K; ++k) g += cr[k] * w1[k];
                memcpy(&sv, s + r * lds, C * sizeof(T));
                if (act == 0) {
                    g *= 1 - sv * sv;
                } else if (act == 1) {
                    g *= sv * (1 - sv);
                } else {
                    for (int j = 0; j < C; ++j) g[j] = sv[j] > 0 ? g[j] : 0;
                }
                gbuf[i] = g;
                const T *gr = (const T *)&gbuf[i]; /* lanes broadcast from memory: load ports, not shuffles */
                veck acc = {0};
                for (int j = 0; j < C; ++j) acc += gr[j] * w2[j];
                STORE_UPDATE(veck, K, acc, alpha, base, r * ldb, out + r * K);
            }
            veck acc[C];
            for (int j = 0; j < C; ++j) acc[j] = (veck){0};
            for (long i = 0; i < n; ++i) { /* sᵀ c */
                veck cv = {0};
                memcpy(&cv, c + (r0 + i) * ldc, K * sizeof(T));
                const T *sr = s + (r0 + i) * lds;
                for (int j = 0; j < C; ++j) acc[j] += sr[j] * cv;
            }
            for (int j = 0; j < C; ++j) {
                tsc[j] += acc[j];
                acc[j] = (veck){0};
            }
            vec ags = {0};
            for (long i = 0; i < n; ++i) { /* gzᵀ y and Σ gz */
                veck yv = {0};
                memcpy(&yv, y + (r0 + i) * ldy, K * sizeof(T));
                const T *gr = (const T *)&gbuf[i];
                for (int j = 0; j < C; ++j) acc[j] += gr[j] * yv;
                ags += gbuf[i];
            }
            for (int j = 0; j < C; ++j) tgy[j] += acc[j];
            tgs += ags;
        }
        T *mine = partial + t * stride;
        for (int j = 0; j < C; ++j) {
            memcpy(mine + j * K, &tsc[j], K * sizeof(T));
            memcpy(mine + C * K + j * K, &tgy[j], K * sizeof(T));
        }
        memcpy(mine + 2 * C * K, &tgs, C * sizeof(T));
    }
    for (long i = 0; i < stride; ++i) {
        T sum = 0;
        for (int t = 0; t < threads; ++t) sum += partial[t * stride + i];
        if (i < C * K) sc[i] = sum;
        else if (i < 2 * C * K) gy[i - C * K] = sum;
        else gs[i - 2 * C * K] = sum;
    }
}
