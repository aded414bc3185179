/* cpu_vector.c: the CPU backend's vectorised inner loops over rows of scores and logits (exp,
 * soft cap, maximum, exp-and-sum, the cross-entropy gradient, attention's dS), compiled for AVX-512, AVX2 and
 * the baseline instruction set and chosen when the program loads, where the toolchain can
 * (gcc >= 6 or clang >= 14 on x86-64 glibc: target_clones). They are most of the time of the
 * cross-entropy over a 50k vocabulary and a quarter of attention's; AVX2 runs them 2-3x faster
 * than the SSE2 baseline.
 *
 * Every clone performs the same IEEE operations on each element (no reductions that depend on
 * the vector width, no FMA contraction), so results are identical whichever clone runs, on any
 * thread or machine. The clones are static, behind plain exported functions: gcc and clang name
 * the load-time dispatcher of an exported clone differently across files. */
#include <config.h>

#include "cpu_internal.h"

#if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__)
#if (defined(__clang__) && __clang_major__ >= 14) || (!defined(__clang__) && __GNUC__ >= 6)
#define CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef CPU_CLONES
#define CPU_CLONES
#endif

static CPU_CLONES float vmax(const float *x, int n) {
    /* eight lanes of selects: vectorises with either compiler; a max is exact in any order */
    float m8[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY,
                   -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) m8[j] = cpu_select(x[i + j] > m8[j], x[i + j], m8[j]);
    for (; i < n; i++) m8[0] = cpu_select(x[i] > m8[0], x[i], m8[0]);
    float m = m8[0];
    for (int j = 1; j < 8; j++) m = cpu_select(m8[j] > m, m8[j], m);
    return m;
}

static CPU_CLONES void vexp(float *e, const float *x, float shift, int n) {
    ETM_OMP(simd)
    for (int i = 0; i < n; i++) e[i] = cpu_expf(x[i] - shift);
}

/* vexp, then the sum of the exponentials in double (cpu_sum: the same eight lanes in the same
 * order in every clone, so the same bits; the wider clones just add them faster) */
static CPU_CLONES double vexp_sum(float *e, const float *x, float shift, int n) {
    ETM_OMP(simd)
    for (int i = 0; i < n; i++) e[i] = cpu_expf(x[i] - shift);
    return cpu_sum(e, n);
}

static CPU_CLONES void vsoftcap(float *z, const float *x, float cap, int n) {
    float inv = 1.0f / cap;
    ETM_OMP(simd)
    for (int i = 0; i < n; i++) z[i] = cpu_softcap1(x[i], cap, inv);
}

static CPU_CLONES void vsigmoid(float *out, const float *x, int n) {
    ETM_OMP(simd)
    for (int i = 0; i < n; i++) out[i] = 1.0f / (1.0f + cpu_expf(-x[i]));
}

static CPU_CLONES void vxent_grad(float *d, const float *z, float inv_sum, float cap, float dloss,
                                  int n) {
    if (cap > 0.0f) {
        float icap = 1.0f / cap;
        ETM_OMP(simd)
        for (int i = 0; i < n; i++) {
            float th = z[i] * icap;
            d[i] = dloss * (d[i] * inv_sum) * (1.0f - th * th); /* dz/dlogit = 1 - tanh^2 */
        }
    } else {
        ETM_OMP(simd)
        for (int i = 0; i < n; i++) d[i] = dloss * (d[i] * inv_sum);
    }
}

static CPU_CLONES void vattention_ds(float *p, float *dp, float lse, float di, int n) {
    ETM_OMP(simd)
    for (int i = 0; i < n; i++) {
        p[i] = cpu_expf(p[i] - lse);
        dp[i] = p[i] * (dp[i] - di);
    }
}

float cpu_vmax(const float *x, int n) { return vmax(x, n); }
void cpu_vexp(float *e, const float *x, float shift, int n) { vexp(e, x, shift, n); }
double cpu_vexp_sum(float *e, const float *x, float shift, int n) { return vexp_sum(e, x, shift, n); }
void cpu_vsoftcap(float *z, const float *x, float cap, int n) { vsoftcap(z, x, cap, n); }
void cpu_vsigmoid(float *out, const float *x, int n) { vsigmoid(out, x, n); }
void cpu_vxent_grad(float *d, const float *z, float inv_sum, float cap, float dloss, int n) {
    vxent_grad(d, z, inv_sum, cap, dloss, n);
}
void cpu_vattention_ds(float *p, float *dp, float lse, float di, int n) {
    vattention_ds(p, dp, lse, di, n);
}
