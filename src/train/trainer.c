/* trainer.c: the training loop (etm_train) and validation (etm_evaluate) of trainer.h: the run
 * directory, the step, progress lines, metrics as JSON Lines, checkpoints and resume. */
#include <config.h>

#include "trainer.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "checkpoint.h"
#include "moe.h"
#include "optim.h"
#include "rng.h"
#include "routing_metrics.h"
#include "tokenizer.h"
#include "trainer_ranks.h"

void etm_train_options_init(etm_train_options *o) { memset(o, 0, sizeof *o); }

/* ---- small helpers ------------------------------------------------------------------------- */

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static void run_path(char *buf, size_t len, const etm_hparams *hp, const char *file) {
    snprintf(buf, len, "%s/%s", hp->out_dir, file);
}

/* "3m05s": the estimated time left, for people. */
static const char *format_duration(char *buf, size_t len, double s) {
    if (!(s >= 0) || s > 1e7) return snprintf(buf, len, "?"), buf;
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, len, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else if (t >= 60)
        snprintf(buf, len, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(buf, len, "%lds", t);
    return buf;
}

/* Mean of the last forward's per-token losses over its valid targets, in token order: the
 * token cross-entropy alone (the model's loss also holds the MoE layers' aux and z terms). */
static double token_loss_sum(const etm_model *m, int n_tokens) {
    double sum = 0.0;
    for (int i = 0; i < n_tokens; i++) sum += m->host_losses[i];
    return sum;
}

/* ---- evaluation ---------------------------------------------------------------------------- */

int etm_evaluate(etm_model *m, const char *glob, int max_seqs, etm_eval_routing routing,
                 etm_eval_result *res, etm_error *err) {
    return etm_evaluate_bytes(m, glob, max_seqs, routing, NULL, res, err);
}

int etm_evaluate_bytes(etm_model *m, const char *glob, int max_seqs, etm_eval_routing routing,
                       const int32_t *token_bytes, etm_eval_result *res, etm_error *err) {
    return etm_evaluate_ranks(m, glob, max_seqs, routing, token_bytes, NULL, res, err);
}

int etm_evaluate_ranks(etm_model *m, const char *glob, int max_seqs, etm_eval_routing routing,
                       const int32_t *token_bytes, etm_comm *comm, etm_eval_result *res, etm_error *err) {
    const etm_hparams *hp = &m->hp;
    int B = m->max_batch, T = hp->seq_len;
    if (!comm) comm = etm_comm_single();
    int W = comm->size;
    etm_error lerr;
    etm_loader *ld = etm_loader_open(glob, B, T, hp->seed, 0, hp->vocab_size, &lerr);
    if (!ld) return etm_fail(err, "validation data: %s", lerr.msg);
    uint64_t n_windows = etm_loader_n_windows(ld);
    int64_t n_seqs = max_seqs > 0 && (uint64_t)max_seqs < n_windows ? max_seqs : (int64_t)n_windows;

    /* router.h: EVAL_BATCH routes ec and et layers by expert choice over the batch's pools and
     * tc layers as EVAL does, without touching the router state */
    etm_moe_mode mode = routing == ETM_EVAL_BATCH ? ETM_MOE_EVAL_BATCH : ETM_MOE_EVAL;

    /* a round is W consecutive batches, batch w of the round on rank w; every rank reads all of
     * them (the targets), and a record per batch carries the forward's per-token losses (B*T, as
     * doubles: exact), the routed pairs and a status (0 ok, 1 failed) */
    size_t BT = (size_t)B * T, rec_len = BT + 2;
    int32_t *inputs = etm_malloc(BT * sizeof(int32_t));
    int32_t *skipped = etm_malloc(BT * sizeof(int32_t)); /* inputs of the other ranks' batches */
    int *bw = etm_malloc((size_t)W * sizeof(int));       /* sequences of the round's batches */
    int32_t *targets = etm_malloc((size_t)W * BT * sizeof(int32_t));
    double *rec = etm_malloc(rec_len * sizeof(double));
    double *recs = etm_malloc((size_t)W * rec_len * sizeof(double));
    double sum = 0.0, experts = 0.0, text_nats = 0.0;
    int64_t done = 0, tokens = 0, bytes = 0;
    int n_moe = 0, rc = 0;
    for (int l = 0; l < hp->n_layer; l++) n_moe += m->moe[l] != NULL;
    while (done < n_seqs && rc == 0) {
        int nb = 0;
        int64_t first = done;
        etm_error own = {{0}};
        for (int w = 0; w < W && done < n_seqs; w++) {
            bw[nb] = (int)ETM_MIN((int64_t)B, n_seqs - done);
            if (etm_loader_next(ld, w == comm->rank ? inputs : skipped, targets + (size_t)w * BT, &lerr) != 0) {
                rc = etm_fail(err, "validation: %s", lerr.msg);
                break;
            }
            done += bw[nb++];
        }
        if (rc != 0) break; /* every rank reads the same data: all fail here together */
        memset(rec, 0, rec_len * sizeof(double));
        if (comm->rank < nb) {
            double loss;
            if (etm_model_forward(m, inputs, targets + (size_t)comm->rank * BT, bw[comm->rank], T, mode,
                                  &loss, &own) != 0) {
                rec[BT + 1] = 1;
            } else {
                for (size_t i = 0; i < (size_t)bw[comm->rank] * T; i++) rec[i] = m->host_losses[i];
                for (int l = 0; l < hp->n_layer; l++)
                    if (m->moe[l]) rec[BT] += etm_moe_last_stats(m->moe[l])->n_pairs;
            }
        }
        if (comm->allgather(comm, rec, rec_len * sizeof(double), recs, &lerr) != 0) {
            rc = etm_fail(err, "validation: gathering the losses: %s", lerr.msg);
            break;
        }
        int64_t seq0 = first;
        for (int w = 0; w < nb && rc == 0; w++) {
            const double *q = recs + (size_t)w * rec_len;
            const int32_t *tg = targets + (size_t)w * BT;
            int b = bw[w];
            if (q[BT + 1] != 0 && w == comm->rank) {
                rc = etm_fail(err, "validation: %s", own.msg);
                break;
            }
            if (q[BT + 1] != 0) {
                rc = etm_fail(err, "validation: rank %d failed on sequences %lld..%lld of %s (its message "
                              "is on its standard error)", w, (long long)seq0, (long long)(seq0 + b - 1), glob);
                break;
            }
            double s = 0.0; /* token_loss_sum's order */
            for (int i = 0; i < b * T; i++) s += (float)q[i];
            if (!isfinite(s)) {
                rc = etm_fail(err, "validation: the loss of sequences %lld..%lld of %s is %s",
                              (long long)seq0, (long long)(seq0 + b - 1), glob, isnan(s) ? "nan" : "inf");
                break;
            }
            sum += s;
            if (token_bytes)
                for (int i = 0; i < b * T; i++)
                    if (tg[i] >= 0 && token_bytes[tg[i]] > 0) {
                        text_nats += (float)q[i];
                        bytes += token_bytes[tg[i]];
                    }
            experts += q[BT];
            tokens += (int64_t)b * T;
            seq0 += b;
        }
    }
    free(inputs);
    free(skipped);
    free(bw);
    free(targets);
    free(rec);
    free(recs);
    etm_loader_free(ld);
    if (rc != 0) return rc;
    res->tokens = tokens;
    res->sequences = (int)done;
    res->loss = tokens > 0 ? sum / (double)tokens : NAN;
    res->perplexity = exp(res->loss);
    res->mean_experts = n_moe > 0 && tokens > 0 ? experts / ((double)tokens * n_moe) : 0.0;
    res->bytes = bytes;
    res->bits_per_byte = token_bytes && bytes > 0 ? text_nats / log(2.0) / (double)bytes : NAN;
    return 0;
}

/* ---- the run directory --------------------------------------------------------------------- */

/* Whether a fresh run may start in out_dir (see doc/training.md): never over a checkpoint, nor
 * over another configuration, unless forced (the caller then removes the old checkpoint once
 * everything else is ready). */
static int check_run_dir(const etm_hparams *hp, etm_error *err) {
    char ckpt[1100], conf[1100];
    run_path(ckpt, sizeof ckpt, hp, ETM_RUN_CHECKPOINT);
    run_path(conf, sizeof conf, hp, ETM_RUN_CONFIG);
    if (file_exists(ckpt))
        return etm_fail(err, "%s holds a run with a checkpoint (%s): continue it with --resume, or "
                        "start over with --force", hp->out_dir, ckpt);
    if (file_exists(conf)) {
        size_t len;
        etm_error e2;
        char *text = etm_read_file(conf, &len, &e2);
        if (!text) return etm_fail(err, "%s", e2.msg);
        etm_hparams old;
        int ok = etm_hparams_from_string(&old, text, conf, &e2) == 0;
        free(text);
        if (!ok)
            return etm_fail(err, "%s holds a run whose configuration does not read back (%s); use "
                            "another out_dir or --force", hp->out_dir, e2.msg);
        const char *key = etm_hparams_first_difference(&old, hp);
        if (key)
            return etm_fail(err, "%s holds another run (its %s differs from this one's '%s'); use "
                            "another out_dir, or --force to replace it", hp->out_dir, conf, key);
    }
    return 0;
}

/* On resume, the metrics of steps after the checkpoint belong to the abandoned continuation:
 * keep only lines with step <= start_step (and drop a line cut short by a crash). */
static int trim_metrics(const char *path, int start_step, etm_error *err) {
    if (!file_exists(path)) return 0;
    size_t len;
    char *text = etm_read_file(path, &len, err);
    if (!text) return -1;
    char *out = etm_malloc(len + 1);
    size_t o = 0;
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        if (!nl) break; /* no newline: an interrupted write */
        *nl = '\0';
        json_t *obj = json_loads(line, 0, NULL);
        json_t *step = obj ? json_object_get(obj, "step") : NULL;
        if (step && json_is_integer(step) && json_integer_value(step) <= start_step) {
            size_t n = (size_t)(nl - line);
            memcpy(out + o, line, n);
            out[o + n] = '\n';
            o += n + 1;
        }
        json_decref(obj);
        line = nl + 1;
    }
    int rc = etm_write_file_atomic(path, out, o, err);
    free(out);
    free(text);
    return rc;
}

/* ---- the run ------------------------------------------------------------------------------- */

typedef struct {
    etm_hparams hp;
    const etm_train_options *opt;
    etm_backend *be;
    etm_model *m;
    etm_optim *optim;
    etm_loader *train;
    etm_rng rng;              /* the trainer's RNG, saved in checkpoints for what may need it */
    int32_t *inputs, *targets; /* host (B*T) */
    int32_t *step_inputs, *step_targets; /* host (local_accum B*T) ec_pool_scope = step: this rank's
                                            micro-batches, read before the routing pass */
    etm_layer_acc *acc;        /* (L), used for MoE layers */
    FILE *metrics;
    char ckpt_path[1100], metrics_path[1100];
    int last_saved;            /* step of the last checkpoint written or resumed from; -1: none */
    /* data parallelism (doc/distributed.md); one process: comm = etm_comm_single() */
    etm_comm *comm;
    int rank, world;           /* comm->rank, comm->size */
    int local_accum;           /* micro-batches of this rank per step; hp.grad_accum = world x this */
    int writer;                /* 1 on rank 0: the run directory, metrics, checkpoints, progress */
    float *grad_fold;          /* (n_params) backend: the ordered sum (one process, grad_accum > 1) */
    float *grad_host;          /* (local_accum, n_params) host (backend memory when
                                  comm->device_memory): this rank's micro-batch gradients
                                  (world > 1), folded by comm->fold_sum */
    float *grad_sum;           /* (n_params) host: their ordered sum over all ranks (world > 1,
                                  host memory only; NCCL folds into the gradients directly) */
    etm_mb_records *recs;      /* the step's micro-batch records (trainer_ranks.h) */
    int stop_agreed;           /* some rank saw the stop flag during the last step */
    int32_t *token_bytes;      /* (V) UTF-8 bytes of each token (bits per byte); NULL: no tokenizer */
} run;

static void layer_acc_reset(run *r) {
    int E = r->hp.n_routed;
    for (int l = 0; l < r->hp.n_layer; l++) {
        etm_layer_acc *a = &r->acc[l];
        int64_t *load = a->load;
        memset(a, 0, sizeof *a);
        a->load = load;
        if (load) memset(load, 0, E * sizeof(int64_t));
    }
}

/* Routed experts per token this step, averaged over the MoE layers (0 for a dense model). */
static double mean_experts(const run *r) {
    double sum = 0.0;
    int n = 0;
    for (int l = 0; l < r->hp.n_layer; l++)
        if (r->m->moe[l] && r->acc[l].tokens > 0) {
            sum += (double)r->acc[l].pairs / (double)r->acc[l].tokens;
            n++;
        }
    return n ? sum / n : 0.0;
}

static int save_checkpoint(run *r, int step, etm_error *err) {
    etm_error e2;
    if (etm_optim_sync_state(r->optim, r->comm, &e2) != 0) /* the Muon momenta to rank 0 too */
        return etm_fail(err, "step %d: gathering the optimizer state: %s", step, e2.msg);
    if (!r->writer) { /* rank 0 writes; the others know the step is saved */
        r->last_saved = step;
        return 0;
    }
    etm_checkpoint_extra extra;
    extra.step = step;
    extra.rng = r->rng;
    etm_loader_get_pos(r->train, &extra.loader);
    if (etm_checkpoint_save(r->ckpt_path, r->m, r->optim, &extra, &e2) != 0)
        return etm_fail(err, "step %d: saving the checkpoint failed: %s", step, e2.msg);
    r->last_saved = step;
    return 0;
}

/* "the last good checkpoint, step 40, is kept" or "no checkpoint was saved". */
static const char *kept_note(const run *r, char *buf, size_t len) {
    if (r->last_saved >= 0)
        snprintf(buf, len, "%s (step %d) is the last good checkpoint and is left as it was",
                 r->ckpt_path, r->last_saved);
    else
        snprintf(buf, len, "no checkpoint was saved");
    return buf;
}

static json_t *json_int64_array(const int64_t *v, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_integer((json_int_t)v[i]));
    return a;
}

static json_t *json_float_array(const float *v, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_real((double)v[i]));
    return a;
}

/* key: v, unless v is NAN (undefined: routing_metrics.h) */
static void set_defined(json_t *o, const char *key, double v) {
    if (!isnan(v)) json_object_set_new(o, key, json_real(v));
}

/* The authors' routing metrics of one layer's step (routing_metrics.h), the cut-off's gap to
 * the threshold in force for ec and et (router.h etm_router_last_cutoff), and the routed experts'
 * scale against the shared ones (etm_expert_scale) from the weights after the step's update. */
static void add_routing_metrics(json_t *lo, const etm_layer_acc *a, const etm_moe_layer *moe,
                                const etm_moe_weights *w, int E) {
    etm_routing_metrics rm;
    etm_routing_summary_metrics(&a->summary, &rm);
    set_defined(lo, "tokens_0", rm.tokens_0);
    set_defined(lo, "tokens_1", rm.tokens_1);
    set_defined(lo, "tokens_2plus", rm.tokens_2plus);
    set_defined(lo, "gate_mean", rm.gate_mean);
    set_defined(lo, "gate_std", rm.gate_std);
    set_defined(lo, "logit_mean", rm.logit_mean);
    set_defined(lo, "logit_std", rm.logit_std);
    set_defined(lo, "capacity_overflow", rm.capacity_overflow);
    set_defined(lo, "capacity_underflow", rm.capacity_underflow);
    double *rms = etm_malloc((size_t)E * sizeof *rms), shared;
    etm_moe_down_rms(moe, w, rms, &shared);
    etm_expert_scale xs;
    etm_expert_scale_of(rms, a->load, E, rm.gate_mean, shared, &xs);
    free(rms);
    set_defined(lo, "down_rms", xs.down_rms);
    set_defined(lo, "gate_down", xs.gate_down);
    set_defined(lo, "shared_down_rms", xs.shared_down_rms);
    set_defined(lo, "gate_down_ratio", xs.gate_down_ratio);
    etm_cutoff_step_info ci;
    if (etm_router_last_cutoff(etm_moe_router(moe), &ci)) json_object_set_new(lo, "cutoff_gap", json_float_array(ci.gap, E));
}

/* One metrics line for a completed step (doc/training.md lists the keys). */
static int write_metrics(run *r, int step, double lr, const etm_optim_stats *os, double loss,
                         double aux, double z, double tok_s, double elapsed, double val_loss,
                         double val_bpb, etm_error *err) {
    const etm_hparams *hp = &r->hp;
    int E = hp->n_routed;
    json_t *o = json_object();
    json_object_set_new(o, "step", json_integer(step));
    json_object_set_new(o, "lr", json_real(lr));
    json_object_set_new(o, "lr_mult", json_real(os->lr_mult));
    json_object_set_new(o, "loss", json_real(loss));
    json_object_set_new(o, "aux_loss", json_real(aux));
    json_object_set_new(o, "z_loss", json_real(z));
    json_object_set_new(o, "grad_norm", json_real(os->grad_norm));
    json_object_set_new(o, "tokens_per_sec", json_real(tok_s));
    json_object_set_new(o, "elapsed", json_real(elapsed));
    if (!isnan(val_loss)) json_object_set_new(o, "val_loss", json_real(val_loss));
    if (!isnan(val_loss) && !isnan(val_bpb)) json_object_set_new(o, "val_bpb", json_real(val_bpb));
    json_t *layers = json_array();
    for (int l = 0; l < hp->n_layer; l++) {
        if (!r->m->moe[l]) continue;
        const etm_layer_acc *a = &r->acc[l];
        json_t *lo = json_object();
        json_object_set_new(lo, "layer", json_integer(l));
        json_object_set_new(lo, "load", json_int64_array(a->load, E));
        json_object_set_new(lo, "mean_experts", json_real(a->tokens ? (double)a->pairs / a->tokens : 0.0));
        json_object_set_new(lo, "no_expert", json_integer(a->no_expert));
        json_object_set_new(lo, "dropped", json_integer(a->dropped));
        json_object_set_new(lo, "padded", json_integer(a->padded));
        add_routing_metrics(lo, a, r->m->moe[l], &r->m->w.layers[l].moe, E);
        json_array_append_new(layers, lo);
    }
    json_object_set_new(o, "routing", layers);
    if (hp->thresholds_every > 0 && step % hp->thresholds_every == 0 && hp->router != ETM_ROUTER_DENSE) {
        json_t *th = json_array();
        for (int l = 0; l < hp->n_layer; l++) {
            if (!r->m->moe[l]) continue;
            etm_router_state st;
            etm_moe_get_state(r->m->moe[l], &st);
            json_t *lo = json_object();
            json_object_set_new(lo, "layer", json_integer(l));
            json_object_set_new(lo, "threshold", json_float_array(st.threshold, E));
            if (hp->router == ETM_ROUTER_TC && hp->tc_balance == ETM_BALANCE_LOSSFREE)
                json_object_set_new(lo, "bias", json_float_array(st.bias, E));
            json_array_append_new(th, lo);
        }
        json_object_set_new(o, "thresholds", th);
    }
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(o);
    if (!text) return etm_fail(err, "step %d: cannot format the metrics (a value is not finite)", step);
    int ok = fprintf(r->metrics, "%s\n", text) > 0 && fflush(r->metrics) == 0;
    free(text);
    if (!ok) return etm_fail(err, "%s: cannot write: %s", r->metrics_path, strerror(errno));
    return 0;
}

static void run_free(run *r) {
    if (r->metrics) fclose(r->metrics);
    if (r->acc)
        for (int l = 0; l < r->hp.n_layer; l++) free(r->acc[l].load);
    free(r->acc);
    free(r->token_bytes);
    free(r->inputs);
    free(r->targets);
    free(r->step_inputs);
    free(r->step_targets);
    if (r->comm && r->comm->device_memory) {
        if (r->grad_host) r->be->free(r->be, r->grad_host);
    } else {
        free(r->grad_host);
    }
    free(r->grad_sum);
    etm_mb_records_free(r->recs);
    if (r->grad_fold) r->be->free(r->be, r->grad_fold);
    etm_loader_free(r->train);
    etm_optim_free(r->optim);
    etm_model_free(r->m);
    if (r->be) etm_backend_free(r->be);
}

/* Everything before the first step: directory, backend, model, optimizer, data, resume. */
static int run_setup(run *r, etm_error *err) {
    etm_hparams *hp = &r->hp;
    const etm_train_options *opt = r->opt;
    etm_error e2;
    r->last_saved = -1;
    if (etm_hparams_validate(hp, err) != 0) return -1;
    if (!hp->out_dir[0]) return etm_fail(err, "out_dir is empty: the run needs a directory");
    if (!hp->train_data[0]) return etm_fail(err, "train_data is empty: nothing to train on");
    if (r->writer && etm_mkdir_p(hp->out_dir, err) != 0) return -1;
    run_path(r->ckpt_path, sizeof r->ckpt_path, hp, ETM_RUN_CHECKPOINT);
    run_path(r->metrics_path, sizeof r->metrics_path, hp, ETM_RUN_METRICS);

    etm_hparams saved;
    if (opt->resume) {
        if (!file_exists(r->ckpt_path))
            return etm_fail(err, "--resume: %s does not exist (nothing to resume in %s)", r->ckpt_path,
                            hp->out_dir);
        if (etm_checkpoint_read_config(r->ckpt_path, &saved, err) != 0) return -1;
        const char *key = etm_checkpoint_config_difference(&saved, hp);
        if (key) {
            char a[1100], b[1100];
            etm_hparams_get(&saved, key, a, sizeof a, &e2);
            etm_hparams_get(hp, key, b, sizeof b, &e2);
            return etm_fail(err, "--resume: %s was trained with %s = %s, this configuration has %s = %s "
                            "(it must not change on resume)", r->ckpt_path, key, a, key, b);
        }
    } else if (r->writer && !opt->force && check_run_dir(hp, err) != 0) {
        return -1;
    }

    r->be = etm_backend_create(hp->backend, err);
    if (!r->be) return -1;
    if ((long long)hp->batch_size * hp->seq_len > INT_MAX / 2)
        return etm_fail(err, "batch_size %d x seq_len %d = %lld tokens per micro-batch: over the limit of %d",
                        hp->batch_size, hp->seq_len, (long long)hp->batch_size * hp->seq_len, INT_MAX / 2);
    int tokens_per_batch = hp->batch_size * hp->seq_len;
    if (hp->router != ETM_ROUTER_DENSE && etm_moe_check_hparams(hp, tokens_per_batch, err) != 0) return -1;
    r->m = etm_model_create(r->be, hp, hp->batch_size, err);
    if (!r->m) return -1;
    r->optim = etm_optim_create(r->be, hp, r->m->table, r->m->n_tensors, err);
    if (!r->optim) return -1;
    r->train = etm_loader_open(hp->train_data, hp->batch_size, hp->seq_len, hp->seed, 1, hp->vocab_size, &e2);
    if (!r->train) return etm_fail(err, "train_data: %s", e2.msg);
    if (hp->val_data[0]) { /* found now rather than at the first validation */
        etm_loader *val = etm_loader_open(hp->val_data, hp->batch_size, hp->seq_len, hp->seed, 0,
                                          hp->vocab_size, &e2);
        if (!val) return etm_fail(err, "val_data: %s", e2.msg);
        etm_loader_free(val);
    }
    etm_rng_seed(&r->rng, hp->seed);
    r->inputs = etm_malloc((size_t)tokens_per_batch * sizeof(int32_t));
    r->targets = etm_malloc((size_t)tokens_per_batch * sizeof(int32_t));
    if (hp->ec_pool_scope == ETM_EC_POOL_STEP) {
        r->step_inputs = etm_malloc((size_t)r->local_accum * tokens_per_batch * sizeof(int32_t));
        r->step_targets = etm_malloc((size_t)r->local_accum * tokens_per_batch * sizeof(int32_t));
    }
    r->acc = etm_calloc(hp->n_layer, sizeof *r->acc);
    for (int l = 0; l < hp->n_layer; l++)
        if (r->m->moe[l]) r->acc[l].load = etm_calloc(hp->n_routed, sizeof(int64_t));
    etm_optim_share(r->optim, r->rank, r->world); /* distributed Muon */
    r->recs = etm_mb_records_create(r->m, r->local_accum, r->world);
    if (r->world > 1 && r->comm->device_memory) {
        r->grad_host = r->be->alloc(r->be, (size_t)r->local_accum * r->m->n_params * sizeof(float));
    } else if (r->world > 1) {
        r->grad_host = etm_try_malloc((size_t)r->local_accum * r->m->n_params * sizeof(float),
                                      "the micro-batch gradients of data parallelism", err);
        r->grad_sum = r->grad_host ? etm_try_malloc(r->m->n_params * sizeof(float), "the summed gradient", err) : NULL;
        if (!r->grad_sum) return -1;
    } else if (hp->grad_accum > 1) {
        r->grad_fold = r->be->alloc(r->be, r->m->n_params * sizeof(float));
    }

    int start = 0;
    if (opt->resume) {
        etm_checkpoint_extra extra;
        if (etm_checkpoint_load(r->ckpt_path, r->m, r->optim, &extra, err) != 0) return -1;
        if (etm_loader_set_pos(r->train, &extra.loader, &e2) != 0)
            return etm_fail(err, "--resume: %s: the training data does not match the checkpoint: %s",
                            r->ckpt_path, e2.msg);
        r->rng = extra.rng;
        start = (int)extra.step;
        r->last_saved = start;
        if (r->writer && trim_metrics(r->metrics_path, start, err) != 0) return -1;
    } else if (r->writer && opt->force && file_exists(r->ckpt_path) && unlink(r->ckpt_path) != 0) {
        return etm_fail(err, "%s: cannot remove the old checkpoint: %s", r->ckpt_path, strerror(errno));
    }

    if (!r->writer) return start;
    char conf[1100];
    run_path(conf, sizeof conf, hp, ETM_RUN_CONFIG);
    char *text = etm_hparams_to_string(hp);
    int rc = etm_write_file_atomic(conf, text, strlen(text), err);
    free(text);
    if (rc != 0) return -1;
    r->metrics = fopen(r->metrics_path, opt->resume ? "a" : "w");
    if (!r->metrics) return etm_fail(err, "%s: cannot open: %s", r->metrics_path, strerror(errno));
    /* bits per byte of the validation records need the tokenizer's byte table; without it the
     * losses are still right, so the run goes on without val_bpb and says why */
    if (hp->val_data[0]) {
        etm_error terr = {{0}};
        etm_tokenizer *tok = etm_tokenizer_load(hp->tokenizer, &terr);
        if (tok) r->token_bytes = etm_tokenizer_byte_lengths(tok, hp->vocab_size, &terr);
        etm_tokenizer_free(tok);
        if (!r->token_bytes && opt->progress)
            fprintf(opt->progress, "train: no val_bpb: tokenizer '%s': %s\n", hp->tokenizer, terr.msg);
    }
    return start;
}

/* ec_pool_scope = step over ranks: every rank's logits of one layer, in rank order (= global
 * micro-batch order, rank k holding micro-batches k x local_accum ...). */
static int pool_gather(void *ctx, const float *mine, size_t n_floats, float *all, etm_error *err) {
    etm_comm *c = ctx;
    return c->allgather(c, mine, n_floats * sizeof(float), all, err);
}

/* One optimizer step s (0-based). Returns 0, or -1 naming the step when something is not finite
 * (nothing of the step is then kept: the optimizer refuses a non-finite gradient norm). Rank k
 * runs the global micro-batches j = k x local_accum + a; every rank reads all of them from the
 * loader (keeping its own), so the data position after the step is the same on every rank and
 * equal to one process's. */
static int train_step(run *r, int s, double *ce, double *aux, double *z, etm_optim_stats *os,
                      etm_error *err) {
    const etm_hparams *hp = &r->hp;
    etm_model *m = r->m;
    etm_backend *be = r->be;
    int B = hp->batch_size, T = hp->seq_len, A = hp->grad_accum, LA = r->local_accum;
    size_t P = m->n_params;
    etm_error e2;
    int failed = 0;
    layer_acc_reset(r);
    /* ec_pool_scope = step: the step's micro-batches are read first (each rank keeping its own)
     * and routed together (model.h etm_model_route_step); the forwards below use that routing */
    int pooled = etm_model_step_routing_needed(m); /* et: during its EC warm-up only */
    size_t BT = (size_t)B * T;
    for (int j = 0; pooled && j < A; j++) {
        int a = j - r->rank * LA, mine = a >= 0 && a < LA;
        if (etm_loader_next(r->train, mine ? r->step_inputs + a * BT : r->inputs,
                            mine ? r->step_targets + a * BT : r->targets, &e2) != 0) {
            etm_fail(err, "step %d: training data: %s", s + 1, e2.msg);
            failed = 1;
            break;
        }
    }
    if (pooled && !failed &&
        etm_model_route_step(m, r->step_inputs, LA, B, T, r->rank * LA, A, r->world > 1 ? pool_gather : NULL,
                             r->comm, &e2) != 0) {
        etm_fail(err, "step %d: routing pass (ec_pool_scope = step): %s", s + 1, e2.msg);
        failed = 1;
    }
    for (int j = 0; j < A; j++) {
        double loss;
        int a = j - r->rank * LA;
        const int32_t *in = r->inputs, *tg = r->targets;
        if (pooled) {
            if (failed) break;
            if (a < 0 || a >= LA) continue;
            in = r->step_inputs + a * BT;
            tg = r->step_targets + a * BT;
        } else if (etm_loader_next(r->train, r->inputs, r->targets, &e2) != 0) {
            etm_fail(err, "step %d: training data: %s", s + 1, e2.msg);
            failed = 1;
            break;
        }
        if (failed || a < 0 || a >= LA) continue;
        etm_model_zero_grad(m);
        if (pooled) etm_model_use_step_routing(m, a);
        if (etm_model_forward(m, in, tg, B, T, ETM_MOE_TRAIN, &loss, &e2) != 0) {
            etm_fail(err, "step %d: %s", s + 1, e2.msg);
            failed = 1;
            continue;
        }
        if (!isfinite(loss)) {
            etm_fail(err, "step %d: the training loss is %s (micro-batch %d of %d)", s + 1,
                     isnan(loss) ? "nan" : "inf", j + 1, A);
            failed = 1;
            continue;
        }
        etm_mb_records_fill(r->recs, m, a, token_loss_sum(m, B * T) / (double)(m->n_valid > 0 ? m->n_valid : 1));
        if (etm_model_backward(m, 1.0f / (float)A, &e2) != 0) {
            etm_fail(err, "step %d: %s", s + 1, e2.msg);
            failed = 1;
            continue;
        }
        /* the step's gradient: the left fold over micro-batches (comm.h) */
        if (r->world > 1 && r->comm->device_memory)
            be->copy(be, r->grad_host + (size_t)a * P, m->grads_memory, P * sizeof(float));
        else if (r->world > 1)
            be->download(be, r->grad_host + (size_t)a * P, m->grads_memory, P * sizeof(float));
        else if (A > 1 && a == 0)
            be->copy(be, r->grad_fold, m->grads_memory, P * sizeof(float));
        else if (A > 1)
            be->axpy(be, r->grad_fold, 1.0f, m->grads_memory, P); /* 1 x g is exact: a float add */
    }
    int bad = etm_ranks_agree(r->comm, failed, r->opt->stop_flag && *r->opt->stop_flag, &r->stop_agreed, err);
    if (bad == -2) return -1;
    if (bad >= 0) {
        if (!failed) etm_fail(err, "step %d: rank %d failed (its message is on its standard error)", s + 1, bad);
        return -1;
    }
    if (r->world > 1 && r->comm->device_memory) {
        be->synchronize(be); /* NCCL runs on its own stream */
        if (r->comm->fold_sum(r->comm, r->grad_host, LA, P, m->grads_memory, &e2) != 0)
            return etm_fail(err, "step %d: summing the gradients over the ranks: %s", s + 1, e2.msg);
    } else if (r->world > 1) {
        if (r->comm->fold_sum(r->comm, r->grad_host, LA, P, r->grad_sum, &e2) != 0)
            return etm_fail(err, "step %d: summing the gradients over the ranks: %s", s + 1, e2.msg);
        be->upload(be, m->grads_memory, r->grad_sum, P * sizeof(float));
    } else if (A > 1) {
        be->copy(be, m->grads_memory, r->grad_fold, P * sizeof(float));
    }
    if (etm_mb_records_gather(r->recs, r->comm, &e2) != 0)
        return etm_fail(err, "step %d: gathering the micro-batch statistics: %s", s + 1, e2.msg);
    double ce_sum = etm_mb_records_apply(r->recs, m, r->acc);
    if (r->world > 1 && etm_mb_records_gather_logits(r->recs, m, r->comm, &e2) != 0)
        return etm_fail(err, "step %d: gathering the router logits (et_cutoff_scope = step): %s", s + 1, e2.msg);
    if (etm_optim_step(r->optim, s, os, &e2) != 0)
        return etm_fail(err, "step %d: %s", s + 1, e2.msg);
    if (etm_optim_exchange(r->optim, r->comm, &e2) != 0) /* distributed Muon (optim.h) */
        return etm_fail(err, "step %d: exchanging the Muon updates: %s", s + 1, e2.msg);
    double sq = be->sum_squares(be, m->params_memory, m->n_params);
    if (!isfinite(sq))
        return etm_fail(err, "step %d: the parameters are no longer finite after the update (gradient "
                        "norm %.4g; is the learning rate too high?)", s + 1, os->grad_norm);
    etm_model_step_end(m);
    if (r->opt->check_replicas) {
        /* the Muon momenta live with their owner rank (optim.h): give every rank all of them first */
        if (etm_optim_sync_state(r->optim, r->comm, err) != 0) return -1;
        if (etm_ranks_check_replicas(r->comm, be, m, r->optim, s, err) != 0) return -1;
    }
    *ce = ce_sum / A;
    *aux = *z = 0.0;
    for (int l = 0; l < hp->n_layer; l++) {
        *aux += r->acc[l].aux / A;
        *z += r->acc[l].z / A;
    }
    return 0;
}

int etm_train(const etm_hparams *hp_in, const etm_train_options *opt_in, etm_train_result *result,
              etm_error *err) {
    etm_train_options defaults;
    etm_train_options_init(&defaults);
    run r;
    memset(&r, 0, sizeof r);
    r.hp = *hp_in;
    r.opt = opt_in ? opt_in : &defaults;
    const etm_train_options *opt = r.opt;
    const etm_hparams *hp = &r.hp;
    etm_train_result res = {0, 0, 0, NAN, NAN, 0.0, 0.0};
    double t0 = etm_now();

    r.comm = opt->comm ? opt->comm : etm_comm_single();
    r.rank = r.comm->rank;
    r.world = r.comm->size;
    r.writer = r.rank == 0;
    if (etm_ranks_check_config(r.comm, &r.hp, err) != 0) return -1;
    /* from here on hp.grad_accum counts the micro-batches of the whole step (doc/distributed.md) */
    r.local_accum = hp_in->grad_accum;
    if (r.local_accum < 1 || (long long)r.local_accum * r.world > INT_MAX / 2)
        return etm_fail(err, "grad_accum=%d on %d ranks: out of range", r.local_accum, r.world);
    r.hp.grad_accum = r.local_accum * r.world;

    int start = run_setup(&r, err);
    /* every rank must set up, or none trains */
    int stop_unused;
    etm_error e3;
    int bad = etm_ranks_agree(r.comm, start < 0, 0, &stop_unused, start < 0 ? &e3 : err);
    if (start < 0 || bad != -1) {
        if (start >= 0 && bad >= 0) etm_fail(err, "rank %d could not start (its message is on its standard error)", bad);
        run_free(&r);
        return -1;
    }
    res.start_step = res.step = start;
    int end = hp->max_steps;
    if (opt->stop_at > 0 && opt->stop_at < end) end = opt->stop_at;
    FILE *log = r.writer ? opt->progress : NULL;
    int64_t tokens_per_step = (int64_t)hp->batch_size * hp->seq_len * hp->grad_accum;
    if (log) {
        fprintf(log, "train: %s: %s router, %.2fM parameters (%.2fM active in matmuls per token), "
                "%lld tokens/step\n", hp->out_dir,
                etm_router_kind_name(hp->router),
                etm_model_num_params(r.m) / 1e6,
                etm_model_active_matmul_params(r.m, hp->router == ETM_ROUTER_DENSE ? 0 : hp->top_k) / 1e6,
                (long long)tokens_per_step);
        if (r.world > 1)
            fprintf(log, "train: %d ranks x grad_accum %d x batch_size %d (%s%s; the gradient is summed in "
                    "micro-batch order)\n", r.world, r.local_accum, hp->batch_size, r.comm->name,
                    !r.comm->device_memory && strcmp(hp->backend, "cpu") ? ", through host memory: no NCCL" : "");
        fprintf(log, "train: data %s: %zu tokens; steps %d..%d of %d%s\n", hp->train_data,
                etm_loader_n_tokens(r.train), start + 1, end, hp->max_steps, opt->resume ? " (resumed)" : "");
        if (start >= end) fprintf(log, "train: nothing to do, %d steps are already done\n", start);
    }

    double train_time = 0.0, window_time = 0.0; /* window: since the last progress line */
    int window_steps = 0, rc = 0;
    char note[1300], buf[32];
    for (int s = start; s < end; s++) {
        if (opt->before_step) opt->before_step(opt->hook_ctx, r.m, s);
        double ts = etm_now(), ce = 0.0, aux = 0.0, z = 0.0;
        etm_optim_stats os;
        if (train_step(&r, s, &ce, &aux, &z, &os, err) != 0) {
            size_t n = strlen(err->msg);
            snprintf(err->msg + n, sizeof err->msg - n, "; stopping: %s", kept_note(&r, note, sizeof note));
            rc = -1;
            break;
        }
        double step_time = etm_now() - ts;
        train_time += step_time;
        window_time += step_time;
        window_steps++;
        int done = s + 1;
        res.step = done;
        res.train_loss = ce;

        double val = NAN, val_bpb = NAN;
        if (hp->val_data[0] && ((hp->eval_every > 0 && done % hp->eval_every == 0) || done == hp->max_steps)) {
            etm_eval_result ev;
            if (etm_evaluate_ranks(r.m, hp->val_data, hp->eval_batches * hp->batch_size, ETM_EVAL_THRESHOLD,
                                   r.token_bytes, r.comm, &ev, err) != 0) {
                size_t n = strlen(err->msg);
                snprintf(err->msg + n, sizeof err->msg - n, " (after step %d); stopping: %s", done,
                         kept_note(&r, note, sizeof note));
                rc = -1;
                break;
            }
            val = res.val_loss = ev.loss;
            val_bpb = ev.bits_per_byte;
        }

        double lr = hp->lr_matrix * os.lr_mult;
        double tok_s = step_time > 0 ? (double)tokens_per_step / step_time : 0.0;
        double elapsed = etm_now() - t0;
        if (r.writer && write_metrics(&r, done, lr, &os, ce, aux, z, tok_s, elapsed, val, val_bpb, err) != 0) {
            rc = -1;
            break;
        }
        int stopping = r.stop_agreed; /* the same on every rank (etm_ranks_agree) */
        if (log && ((hp->log_every > 0 && done % hp->log_every == 0) || done == end || s == start ||
                    !isnan(val) || stopping)) {
            double eta = (elapsed / (done - start)) * (end - done);
            fprintf(log, "step %5d/%d  loss %.4f", done, hp->max_steps, ce);
            if (!isnan(val)) fprintf(log, "  val %.4f", val);
            fprintf(log, "  lr %.3g  %.0f tok/s  ETA %s", lr, window_time > 0 ? (double)tokens_per_step * window_steps / window_time : 0.0,
                    format_duration(buf, sizeof buf, eta));
            window_time = 0.0;
            window_steps = 0;
            if (hp->router != ETM_ROUTER_DENSE) fprintf(log, "  experts/token %.2f", mean_experts(&r));
            fputc('\n', log);
            fflush(log);
        }
        if ((hp->ckpt_every > 0 && done % hp->ckpt_every == 0) || done == end || stopping) {
            if (save_checkpoint(&r, done, err) != 0) {
                rc = -1;
                break;
            }
        }
        if (stopping) {
            res.interrupted = 1;
            if (log) fprintf(log, "train: stopped at step %d on request; checkpoint %s\n", done, r.ckpt_path);
            break;
        }
    }
    if (rc == 0 && log && res.step > start && !res.interrupted)
        fprintf(log, "train: done, step %d, checkpoint %s\n", res.step, r.ckpt_path);
    res.seconds = etm_now() - t0;
    res.tokens_per_sec = train_time > 0 ? (double)tokens_per_step * (res.step - start) / train_time : 0.0;
    if (result) *result = res;
    run_free(&r);
    return rc;
}
