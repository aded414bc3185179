/* checkpoint.h: saving and restoring everything a run needs to resume exactly, in one
 * safetensors file (doc/checkpoint-format.md): every model parameter, the optimizer state, each
 * MoE layer's router state, the trainer's step, RNG and data-loader position, and the complete
 * configuration text with a format version in the header's metadata.
 *
 * Saving is deterministic (the same state gives the same bytes) and atomic (a temporary file
 * renamed into place: an existing checkpoint survives a failed save). Loading validates the whole
 * file against the model first (format, configuration, every tensor's presence, dtype and shape,
 * no unknown tensors) and changes nothing unless all of it is right; errors name the file and the
 * tensor or configuration key. */
#ifndef ETM_CHECKPOINT_H
#define ETM_CHECKPOINT_H

#include <stdint.h>

#include "common.h"
#include "hparams.h"
#include "loader.h"
#include "model.h"
#include "rng.h"
#include "safetensors.h"

/* The value of __metadata__["format"]; a reader refuses any other. */
#define ETM_CHECKPOINT_FORMAT "etmoe-checkpoint-1"

struct etm_optim; /* src/optim/optim.h */

/* The trainer's position: saved as the tensors "step", "rng" and "loader.pos". */
typedef struct {
    int64_t step;          /* optimizer steps completed; the run resumes with step number `step` */
    etm_rng rng;           /* the trainer's RNG state */
    etm_loader_pos loader; /* the training loader's position (etm_loader_get_pos) */
} etm_checkpoint_extra;

/* Writes path atomically: the model's parameters and router state, the optimizer's state when
 * opt is non-NULL, the trainer's position when extra is non-NULL, and the metadata (format,
 * config = etm_hparams_to_string(&m->hp), etmoe_version, step). Without opt and extra it is a
 * model file (for evaluation and sampling). Returns 0, or -1 with a message (path untouched). */
int etm_checkpoint_save(const char *path, etm_model *m, const struct etm_optim *opt,
                        const etm_checkpoint_extra *extra, etm_error *err);

/* Reads only the configuration stored in path's header (checking the format), so a caller can
 * build the model before loading. Returns 0, or -1 with a message naming the file. */
int etm_checkpoint_read_config(const char *path, etm_hparams *hp, etm_error *err);

/* Restores path into m, into opt when non-NULL (the file must then hold its state), and fills
 * extra when non-NULL (the file must then hold step, rng and loader.pos). The checkpoint's
 * configuration must agree with m->hp on every key etm_checkpoint_config_difference compares.
 * A file's optimizer or position tensors are ignored when opt or extra is NULL; any other tensor
 * the model does not expect is an error. Everything is validated before anything changes: on
 * failure (-1, message naming the file and the tensor or key) m, opt and extra are untouched. */
int etm_checkpoint_load(const char *path, etm_model *m, struct etm_optim *opt,
                        etm_checkpoint_extra *extra, etm_error *err);

/* Builds the model described by path's configuration on be, for micro-batches of up to max_batch
 * sequences, and loads its parameters and router state (for evaluation, sampling, dump and
 * inspect). NULL with a message on error. */
etm_model *etm_checkpoint_load_model(const char *path, etm_backend *be, int max_batch, etm_error *err);

/* The first configuration key that must agree between a checkpoint's configuration and the run
 * resuming it, or NULL when they agree: every key of the [model] and [moe] sections, seed,
 * batch_size and matrix_optimizer (they shape the parameters, the state or the data order). The
 * other keys (schedule, learning rates, paths, eval/log cadence, ...) may change on resume. */
const char *etm_checkpoint_config_difference(const etm_hparams *ckpt, const etm_hparams *run);

/* The optimizer's state in a checkpoint (checkpoint_optim.c). Save adds every state tensor to a
 * writer (downloaded into buffers the writer owns); load restores every one of them, after
 * checking that all exist with the right dtype and shape, before changing any. */
int etm_optim_save(const struct etm_optim *opt, etm_st_writer *w, etm_error *err);
int etm_optim_load(struct etm_optim *opt, etm_st_file *f, etm_error *err);

#endif
