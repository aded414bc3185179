/* rng.h: a small, seedable, reproducible random number generator (xoshiro256** seeded through
 * splitmix64). Its whole state is a value, so it can be saved in checkpoints and restored. */
#ifndef ETM_RNG_H
#define ETM_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4]; /* xoshiro256** state; never all zero */
} etm_rng;

void etm_rng_seed(etm_rng *rng, uint64_t seed);
uint64_t etm_rng_next(etm_rng *rng);
/* Uniform in [0, 1) with 24 random bits (exactly representable as float). */
float etm_rng_uniform(etm_rng *rng);
/* Uniform integer in [0, n), unbiased. n > 0. */
uint64_t etm_rng_below(etm_rng *rng, uint64_t n);
/* Standard normal (Box-Muller, double precision inside). */
float etm_rng_normal(etm_rng *rng);
/* Fills x[0..n) with N(0, std^2). */
void etm_rng_fill_normal(etm_rng *rng, float *x, uint64_t n, float std);
/* Fisher-Yates shuffle of idx[0..n). */
void etm_rng_shuffle_u32(etm_rng *rng, uint32_t *idx, uint64_t n);

#endif
