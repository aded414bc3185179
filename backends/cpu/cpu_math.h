/* cpu_math.h: exp and tanh for the CPU backend's hot loops (attention and cross-entropy over a
 * 50k vocabulary spend more time in libm's scalar expf/tanhf than in their GEMMs). These are
 * branch-free, so loops over them vectorise (ETM_OMP(simd)); the scalar and vector code perform
 * the same IEEE operations, so a value does not depend on which path or thread computed it.
 *
 * cpu_expf: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, and the Cephes degree-6
 * polynomial for exp(r); within 2 ulp of exp on [-87.3, 88.3], exactly 0 below (where exp is
 * below FLT_MIN), saturating at exp(88.3) above, NaN for NaN.
 * cpu_tanhf: (1 - e) / (1 + e) with e = exp(-2|x|), sign restored; absolute error below 2e-7
 * (relative error grows near 0, where tanh x ~ x is tiny anyway). */
#ifndef ETM_CPU_MATH_H
#define ETM_CPU_MATH_H

#include <stdint.h>
#include <string.h>

/* No fused multiply-adds in what follows (and in the file including this): with them a clone
 * built for AVX2 or AVX-512 would round differently from the baseline one. gcc's -std=c99 already
 * means -ffp-contract=off; clang contracts by default. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

static inline uint32_t cpu_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float cpu_float(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* c ? a : b as bit operations: compilers keep `?:` on floats as branches (comparisons may trap),
 * which stops loops from vectorising. */
static inline float cpu_select(int c, float a, float b) {
    uint32_t m = (uint32_t) - (int32_t)(c != 0);
    return cpu_float((cpu_bits(a) & m) | (cpu_bits(b) & ~m));
}

static inline float cpu_expf(float x) {
    const float lo = -87.33654f, hi = 88.3f;
    float xc = cpu_select(x < lo, lo, x);
    xc = cpu_select(xc > hi, hi, xc);
    xc = cpu_select(xc == xc, xc, 0.0f); /* NaN: computed on 0, replaced at the end */
    /* n = round(x / ln2) by the 1.5 * 2^23 trick (exact under round-to-nearest) */
    const float shifter = 12582912.0f;
    float n = (xc * 1.44269504088896341f + shifter) - shifter;
    float r = xc - n * 0.693359375f; /* ln2 high part, exact product */
    r = r - n * -2.12194440e-4f;     /* ln2 low part */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    float y = p * cpu_float((uint32_t)((int32_t)n + 127) << 23); /* 2^n, n in [-126, 127] */
    y = cpu_select(x < lo, 0.0f, y);
    return cpu_select(x != x, x, y);
}

static inline float cpu_tanhf(float x) {
    uint32_t sign = cpu_bits(x) & 0x80000000u;
    float e = cpu_expf(-2.0f * cpu_float(cpu_bits(x) ^ sign)); /* exp(-2|x|) */
    float t = (1.0f - e) / (1.0f + e);
    return cpu_float(cpu_bits(t) | sign);
}

/* Sum of x[0..n) in double: eight interleaved partial sums combined in a fixed order, so the
 * result does not depend on alignment, vector width or thread. */
static inline double cpu_sum(const float *x, int n) {
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += x[i + j];
    for (; i < n; i++) s[i & 7] += x[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

#endif
