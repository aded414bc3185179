/* compare_ops.h: runs every operation of backends/backend.h on two backends with the same
 * random inputs and compares the results, op by op (the analogue of ggml's test-backend-ops).
 *
 * Sizes are small and deliberately awkward (odd, not multiples of tile sizes, padded leading
 * dimensions, empty groups, ignored targets, routing ties). Each output is compared with a stated
 * tolerance on the normalised squared error sum((t - r)^2) / sum(r^2); routing decisions,
 * dispatch indices, gathers and copies must agree exactly; a NaN never passes. Every op is also
 * run twice on the backend under test, and the two results must be identical bit for bit
 * (determinism). Used by tests/check_cuda (cpu against cuda) and by `etmoe check-backend`. */
#ifndef ETM_COMPARE_OPS_H
#define ETM_COMPARE_OPS_H

#include <stdint.h>
#include <stdio.h>

#include "backend.h"

/* Compares test against ref (the reference, normally "cpu") on inputs drawn from seed. Writes a
 * table with one line per compared output to report (when non-NULL): op, output, size, largest
 * absolute difference, normalised error, tolerance, whether the repeat was identical, verdict.
 * Returns the number of failed comparisons (0: the backends agree). */
int etm_check_backend_ops(etm_backend *ref, etm_backend *test, uint64_t seed, FILE *report);

/* Normalised error used above: sum((t - r)^2) / max(sum(r^2), tiny), in double; +infinity when
 * t has a NaN or infinity where r does not, and also when r itself has one (NaN never passes). */
double etm_check_nmse(const float *ref, const float *test, size_t n);

#endif
