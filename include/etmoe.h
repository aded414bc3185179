/* etmoe.h: the public interface of libetmoe, the reference implementation of Expert Threshold
 * routing and TC-MoE: build or load a model, run forward and
 * backward passes on a batch, write the dump file of one training step, and call one backend
 * operation through the backend's table, for a program that wants to compare its own kernels or
 * framework with the reference.
 *
 * Everything is an opaque handle with a create/free pair; functions that can fail return 0 (or a
 * handle) on success and -1 (or NULL) with a message in *err (may be NULL) that says what and
 * where. Arrays are host memory, row-major. Link with `pkg-config --cflags --libs etmoe`.
 * The ABI follows libtool's -version-info (see configure.ac); ETMOE_API_VERSION grows when
 * functions are added. */
#ifndef ETMOE_H
#define ETMOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ETMOE_API_VERSION 1

/* A failure's message; empty when there was none. */
typedef struct {
    char message[1024];
} etmoe_error;

/* The library's version, e.g. "0.1.0" (the etmoe package's). */
const char *etmoe_version(void);

/* ---- backends --------------------------------------------------------------------------------- */
typedef struct etmoe_backend etmoe_backend;

/* The compute backend called name ("cpu", "cuda" when built in); NULL with a message when it is
 * unknown, not built in or has no device. */
etmoe_backend *etmoe_backend_create(const char *name, etmoe_error *err);
void etmoe_backend_free(etmoe_backend *be);
const char *etmoe_backend_name(const etmoe_backend *be);

/* The operations every backend implements (the reference's list), by index < count. */
int etmoe_backend_op_count(void);
const char *etmoe_backend_op_name(int i);

/* The backend's gemm operation on host arrays: C(M,N) = alpha op(A) op(B) + beta C, where op(A) is
 * (M,K) and op(B) is (K,N); A is stored (trans_a ? K : M) rows of lda floats, B (trans_b ? N : K)
 * rows of ldb, C M rows of ldc. The arrays are copied to the backend and C back. */
int etmoe_backend_gemm(etmoe_backend *be, int trans_a, int trans_b, int M, int N, int K,
                       float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                       float *C, int ldc, etmoe_error *err);

/* ---- models ----------------------------------------------------------------------------------- */
typedef struct etmoe_model etmoe_model;

/* A new model from a configuration (a preset name such as "demo", a .conf path, or NULL for the
 * defaults) with
 * n_settings "key=value" overrides, initialised from its seed, for batches of up to max_batch
 * sequences (0: the configuration's batch_size). be must outlive the model; NULL: the model
 * creates and owns the configuration's backend. */
etmoe_model *etmoe_model_create(const char *config, const char *const *settings, int n_settings,
                                etmoe_backend *be, int max_batch, etmoe_error *err);

/* The model stored in a checkpoint (as written by `etmoe train` or etmoe_model_save); be and
 * max_batch as above. */
etmoe_model *etmoe_model_load(const char *checkpoint, etmoe_backend *be, int max_batch,
                              etmoe_error *err);
void etmoe_model_free(etmoe_model *m);

/* Writes the model (parameters, router state, configuration) to path, atomically. */
int etmoe_model_save(etmoe_model *m, const char *path, etmoe_error *err);

int etmoe_model_vocab_size(const etmoe_model *m);
int etmoe_model_seq_len(const etmoe_model *m); /* tokens per sequence, T */
int etmoe_model_max_batch(const etmoe_model *m);
size_t etmoe_model_num_params(const etmoe_model *m);

/* How MoE layers route in a forward: as in training (batch routing, router statistics) or as
 * in evaluation (frozen thresholds). */
typedef enum { ETMOE_TRAIN = 0, ETMOE_EVAL = 1 } etmoe_mode;

/* Forward pass over B sequences of T tokens (tokens (B*T) in [0, vocab)). With targets (B*T; a
 * negative target is ignored) *loss (may be NULL) gets the mean cross-entropy plus the MoE
 * layers' added losses. */
int etmoe_model_forward(etmoe_model *m, const int32_t *tokens, const int32_t *targets, int B,
                        int T, etmoe_mode mode, double *loss, etmoe_error *err);

/* Gradients of the last forward's loss (which needed targets), replacing earlier gradients;
 * *grad_norm (may be NULL) gets their global L2 norm. */
int etmoe_model_backward(etmoe_model *m, double *grad_norm, etmoe_error *err);

/* Soft-capped logits of rows first..first+rows-1 of the last forward, into out (rows, vocab). */
int etmoe_model_logits(etmoe_model *m, float *out, int first, int rows, etmoe_error *err);

/* The dump file of one training step (doc/dump-format.md): forward in ETMOE_TRAIN mode and backward
 * on B sequences of seq_len tokens, every tensor written to path; *loss (may be NULL) gets the
 * loss. source names the model's origin in the file (may be NULL). */
int etmoe_model_dump(etmoe_model *m, const int32_t *tokens, const int32_t *targets, int B,
                     const char *source, const char *path, double *loss, etmoe_error *err);

#ifdef __cplusplus
}
#endif

#endif
