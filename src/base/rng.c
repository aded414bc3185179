/* rng.c: xoshiro256** (Blackman and Vigna) seeded with splitmix64. */
#include "rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

void etm_rng_seed(etm_rng *rng, uint64_t seed) {
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t etm_rng_next(etm_rng *rng) {
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float etm_rng_uniform(etm_rng *rng) { return (float)(etm_rng_next(rng) >> 40) * (1.0f / 16777216.0f); }

uint64_t etm_rng_below(etm_rng *rng, uint64_t n) {
    uint64_t limit = UINT64_MAX - UINT64_MAX % n; /* reject the biased tail */
    uint64_t x;
    do x = etm_rng_next(rng);
    while (x >= limit);
    return x % n;
}

float etm_rng_normal(etm_rng *rng) {
    /* 53-bit uniforms in (0, 1]; one normal per call keeps the state a plain value. */
    double u1 = ((double)(etm_rng_next(rng) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(etm_rng_next(rng) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void etm_rng_fill_normal(etm_rng *rng, float *x, uint64_t n, float std) {
    for (uint64_t i = 0; i < n; i++) x[i] = std * etm_rng_normal(rng);
}

void etm_rng_shuffle_u32(etm_rng *rng, uint32_t *idx, uint64_t n) {
    for (uint64_t i = n; i > 1; i--) {
        uint64_t j = etm_rng_below(rng, i);
        uint32_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}
