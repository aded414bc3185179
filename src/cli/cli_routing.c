/* cli_routing.c: `etmoe routing-profile`, where a checkpoint's MoE layers send the tokens of
 * validation data: routes batches through the model (thresholds, or expert choice over the batch)
 * and writes the tables of src/routing_report.h plus a summary, for the experiment's figures. */
#include <config.h>

#include "backend.h"
#include "checkpoint.h"
#include "cli.h"
#include "cli_checkpoint.h"
#include "common.h"
#include "loader.h"
#include "model.h"
#include "moe.h"
#include "routing_report.h"
#include "tokenizer.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(void) {
    printf("usage: etmoe routing-profile CHECKPOINT --out DIR [options]\n"
           "\n"
           "Routes validation batches through the checkpoint's model and writes, into DIR, tables of\n"
           "the routed experts per token (averaged over the MoE layers; shared experts not counted):\n"
           "  summary.tsv   key, value: tokens, loss, mean experts per token, share with none, loads,\n"
           "                mean gate (sigmoid of the logit) over all routed pairs\n"
           "  layers.tsv    per layer: experts-per-token histogram shares, max/min load over mean, loads\n"
           "  position.tsv  by position in the sequence      kind.tsv  by token kind (word, number,\n"
           "  tokens.tsv    by token id, most experts first    punctuation, whitespace, other)\n"
           "  batches.tsv   per batch, layer and expert: load, usage, the EC cut-off over the pool\n"
           "                (the k_target-th largest logit) and the expert's threshold\n"
           "  passage.tsv   the first tokens laid out as text with the experts each one used\n"
           "\n"
           "  --data SHARDS    token shards (default: the config's val_data), in order from the first\n"
           "  --batches N      batches to route (default 16; fewer if the data holds fewer)\n"
           "  --batch B        sequences per batch (default: the config's batch_size)\n"
           "  --mode M         threshold (default): route as at inference, per token (ET/EC thresholds,\n"
           "                   TC top-k); batch: ET/EC route by expert choice over each batch's pools\n"
           "  --pool P         sequences per pool for the reported cut-offs (default: the config's\n"
           "                   pool_seqs, which --mode batch routes by; 0 = the whole batch)\n"
           "  --passage N      tokens in passage.tsv (default 400)\n"
           "  --width W        passage line width in characters (default 80)\n"
           "  --min-count C    tokens.tsv lists ids seen at least C times (default 20)\n"
           "  --backend NAME   compute backend (default: the config's backend)\n"
           "  --help           this text\n");
}

typedef struct {
    const char *mode;      /* "threshold" | "batch" */
    long batches, B, pool_seqs, passage, width, min_count;
} profile_options;

/* Routes the batches and fills the report; *loss_sum and *n_valid get the token cross-entropy. */
static int profile(etm_model *m, etm_loader *ld, etm_routing_report *rep, const profile_options *o,
                   long *batches_done, double *loss_sum, int64_t *n_valid, etm_error *err) {
    const etm_hparams *hp = &m->hp;
    int T = hp->seq_len, E = hp->n_routed, B = (int)o->B, N = B * T;
    int Lm = rep->cfg.n_layers;
    int *layer_of = etm_malloc((size_t)Lm * sizeof(int));
    for (int l = 0, i = 0; l < hp->n_layer; l++)
        if (m->moe[l]) layer_of[i++] = l;
    int32_t *inputs = etm_malloc((size_t)N * sizeof(int32_t)), *targets = etm_malloc((size_t)N * sizeof(int32_t));
    uint8_t **masks = etm_malloc((size_t)Lm * sizeof *masks);
    float **logits = etm_malloc((size_t)Lm * sizeof *logits), **thr = etm_malloc((size_t)Lm * sizeof *thr);
    for (int i = 0; i < Lm; i++) {
        masks[i] = etm_malloc((size_t)N * E);
        logits[i] = etm_malloc((size_t)N * E * sizeof(float));
        thr[i] = etm_malloc((size_t)E * sizeof(float));
        etm_router_state st;
        etm_moe_get_state(m->moe[layer_of[i]], &st);
        memcpy(thr[i], st.threshold, (size_t)E * sizeof(float));
    }
    /* thresholds mean something for ec and et models only */
    int with_thresholds = hp->router == ETM_ROUTER_EC || hp->router == ETM_ROUTER_ET;
    int batch_mode = !strcmp(o->mode, "batch") && with_thresholds;
    /* router.h: EVAL_BATCH routes ec and et layers by expert choice over the batch's pools,
     * without touching the router state */
    etm_moe_mode mode = batch_mode ? ETM_MOE_EVAL_BATCH : ETM_MOE_EVAL;
    /* the EC cut-off sizes of the report's pools (o->pool_seqs, which may differ from the
     * model's) */
    etm_hparams pool_hp = *hp;
    pool_hp.router = ETM_ROUTER_EC;
    pool_hp.pool_seqs = (int)o->pool_seqs;
    etm_routing_sizes sizes = etm_router_sizes(&pool_hp, N);
    /* one pass over the data at most: a window is never counted twice */
    long windows = (long)etm_loader_n_windows(ld), n_batches = ETM_MIN(o->batches, windows / B);
    int rc = 0;
    if (n_batches < 1) rc = etm_fail(err, "the data holds %ld sequences of %d tokens, fewer than one batch of %d", windows, T, B);
    *loss_sum = 0;
    *n_valid = 0;
    for (long b = 0; b < n_batches && rc == 0; b++) {
        double loss;
        etm_error lerr = {{0}};
        if (etm_loader_next(ld, inputs, targets, &lerr) != 0 ||
            etm_model_forward(m, inputs, targets, B, T, mode, &loss, &lerr) != 0) {
            rc = etm_fail(err, "batch %ld: %s", b, lerr.msg);
            break;
        }
        for (int n = 0; n < N; n++)
            if (targets[n] >= 0) {
                *loss_sum += m->host_losses[n];
                (*n_valid)++;
            }
        for (int i = 0; i < Lm; i++) {
            m->be->download(m->be, masks[i], etm_moe_mask(m->moe[layer_of[i]]), (size_t)N * E);
            m->be->download(m->be, logits[i], etm_moe_logits(m->moe[layer_of[i]]), (size_t)N * E * sizeof(float));
        }
        etm_routing_batch rb = {inputs, B, T, (const uint8_t *const *)masks, (const float *const *)logits,
                                with_thresholds ? (const float *const *)thr : NULL,
                                sizes.pool, sizes.k_target};
        if (etm_routing_report_add(rep, &rb, err) != 0) rc = -1;
        *batches_done = b + 1;
    }
    for (int i = 0; i < Lm; i++) {
        free(masks[i]);
        free(logits[i]);
        free(thr[i]);
    }
    free(masks);
    free(logits);
    free(thr);
    free(inputs);
    free(targets);
    free(layer_of);
    return rc;
}

static int write_summary(const char *dir, const char *ckpt, const etm_hparams *hp, const profile_options *o,
                         long batches, const etm_routing_report *rep, double loss_sum, int64_t n_valid,
                         etm_error *err) {
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/summary.tsv", dir);
    FILE *f = etm_open_atomic(path, tmp, sizeof tmp, err);
    if (!f) return -1;
    int L = rep->cfg.n_layers, E = rep->cfg.n_experts;
    double max_over_mean = 0, min_over_mean = 0, gate_sum = 0;
    int64_t gate_pairs = 0;
    for (int l = 0; l < L; l++) {
        int64_t pairs = 0, mx = 0, mn = INT64_MAX;
        for (int e = 0; e < E; e++) {
            int64_t x = rep->layer_load[(size_t)l * E + e];
            pairs += x;
            mx = ETM_MAX(mx, x);
            mn = ETM_MIN(mn, x);
        }
        double mean = (double)pairs / E;
        gate_sum += rep->layer_gate_sum[l];
        gate_pairs += rep->layer_gate_pairs[l];
        max_over_mean += mean > 0 ? mx / mean : NAN;
        min_over_mean += mean > 0 ? mn / mean : NAN;
    }
    fprintf(f, "# key\tvalue\n");
    fprintf(f, "checkpoint\t%s\n", ckpt);
    fprintf(f, "router\t%s\n", etm_router_kind_name(hp->router));
    fprintf(f, "mode\t%s\n", hp->router == ETM_ROUTER_TC ? "threshold" : o->mode);
    fprintf(f, "pool_seqs\t%ld\n", o->pool_seqs);
    fprintf(f, "batches\t%ld\n", batches);
    fprintf(f, "batch_size\t%ld\n", o->B);
    fprintf(f, "tokens\t%lld\n", (long long)rep->tokens);
    fprintf(f, "moe_layers\t%d\n", L);
    fprintf(f, "n_routed\t%d\n", E);
    fprintf(f, "top_k\t%d\n", hp->top_k);
    fprintf(f, "loss\t%.6f\n", n_valid ? loss_sum / (double)n_valid : NAN);
    fprintf(f, "mean_experts\t%.6g\n", etm_routing_report_mean_experts(rep));
    fprintf(f, "frac_zero\t%.6g\n", etm_routing_report_zero_fraction(rep));
    fprintf(f, "max_over_mean_load\t%.6g\n", max_over_mean / L);
    fprintf(f, "min_over_mean_load\t%.6g\n", min_over_mean / L);
    /* over all routed pairs of all layers: a layer that routed nothing does not make it NaN */
    if (gate_pairs > 0) fprintf(f, "mean_gate\t%.6g\n", gate_sum / (double)gate_pairs);
    else fprintf(f, "mean_gate\tNaN\n");
    return etm_commit_atomic(f, tmp, path, err);
}

int cmd_routing_profile(int argc, char **argv) {
    const char *ckpt = NULL, *data = NULL, *backend = NULL, *out = NULL;
    const char *batches_text = NULL, *batch_text = NULL, *mode = "threshold", *pool_text = NULL;
    const char *passage_text = NULL, *width_text = NULL, *min_count_text = NULL;
    const cli_option opts[] = {
        {"--data", &data, NULL},
        {"--out", &out, NULL},
        {"--batches", &batches_text, NULL},
        {"--batch", &batch_text, NULL},
        {"--mode", &mode, NULL},
        {"--pool", &pool_text, NULL},
        {"--passage", &passage_text, NULL},
        {"--width", &width_text, NULL},
        {"--min-count", &min_count_text, NULL},
        {"--backend", &backend, NULL},
    };
    int parsed = cli_parse_options("routing-profile", argc, argv, opts, ETM_ARRAY_LEN(opts), "checkpoint", &ckpt, usage);
    if (parsed != CLI_PARSED) return parsed == CLI_HELP_SHOWN ? ETM_EXIT_OK : parsed;
    if (!ckpt) return cli_usage_error("routing-profile", "no checkpoint given");
    if (!out) return cli_usage_error("routing-profile", "no output directory given (--out DIR)");
    if (strcmp(mode, "threshold") && strcmp(mode, "batch"))
        return cli_usage_error("routing-profile", "--mode must be threshold or batch, not '%s'", mode);
    cli_ckpt c;
    int rc = cli_ckpt_open(&c, "routing-profile", ckpt);
    if (rc != ETM_EXIT_OK) return rc;
    etm_hparams hp = c.hp;
    etm_error err = {{0}};
    profile_options o = {mode, 16, hp.batch_size, hp.pool_seqs, 400, 80, 20};
    if (batches_text && cli_parse_long(batches_text, 1, 1L << 30, &o.batches))
        return cli_usage_error("routing-profile", "--batches must be a positive integer, not '%s'", batches_text);
    if (batch_text && cli_parse_long(batch_text, 1, 1L << 30, &o.B))
        return cli_usage_error("routing-profile", "--batch must be a positive integer, not '%s'", batch_text);
    if (pool_text && cli_parse_long(pool_text, 0, 1L << 30, &o.pool_seqs))
        return cli_usage_error("routing-profile", "--pool must be an integer >= 0, not '%s'", pool_text);
    if (passage_text && cli_parse_long(passage_text, 0, 1L << 30, &o.passage))
        return cli_usage_error("routing-profile", "--passage must be an integer >= 0, not '%s'", passage_text);
    if (width_text && (cli_parse_long(width_text, 8, 1L << 30, &o.width) || o.width > 10000))
        return cli_usage_error("routing-profile", "--width must be an integer in 8..10000, not '%s'", width_text);
    if (min_count_text && cli_parse_long(min_count_text, 1, 1L << 30, &o.min_count))
        return cli_usage_error("routing-profile", "--min-count must be a positive integer, not '%s'", min_count_text);
    if (hp.router == ETM_ROUTER_DENSE) {
        fprintf(stderr, "etmoe routing-profile: %s is a dense model: it has no routing to profile\n", ckpt);
        return ETM_EXIT_FAIL;
    }
    if (o.pool_seqs > 0 && o.B % o.pool_seqs != 0)
        return cli_usage_error("routing-profile", "a pool of %ld sequences does not divide the batch of %ld", o.pool_seqs,
                               o.B);
    etm_model *m = NULL;
    etm_loader *ld = NULL;
    etm_tokenizer *tok = NULL;
    etm_routing_report *rep = NULL;
    rc = cli_ckpt_load(&c, backend, (int)o.B);
    if (rc != ETM_EXIT_OK) {
        cli_ckpt_close(&c);
        return rc;
    }
    rc = ETM_EXIT_FAIL;
    m = c.m;
    ld = etm_loader_open(data ? data : hp.val_data, (int)o.B, hp.seq_len, hp.seed, 0, hp.vocab_size, &err);
    if (!ld) goto done;
    tok = etm_tokenizer_load(hp.tokenizer, &err);
    if (!tok) goto done;
    int Lm = 0;
    for (int l = 0; l < hp.n_layer; l++) Lm += m->moe[l] != NULL;
    etm_routing_report_config cfg = {Lm, hp.n_routed, hp.seq_len, hp.vocab_size, hp.top_k, (int)o.passage};
    rep = etm_routing_report_create(&cfg, tok, &err);
    if (!rep) goto done;
    long batches = 0;
    double loss_sum = 0;
    int64_t n_valid = 0;
    if (profile(m, ld, rep, &o, &batches, &loss_sum, &n_valid, &err) != 0) goto done;
    /* the output directory only now: a refused or failed run leaves none behind */
    if (mkdir(out, 0777) != 0 && errno != EEXIST) {
        etm_fail(&err, "cannot create %s: %s", out, strerror(errno));
        goto done;
    }
    if (etm_routing_report_write(rep, out, (int)o.min_count, (int)o.width, &err) != 0 ||
        write_summary(out, ckpt, &hp, &o, batches, rep, loss_sum, n_valid, &err) != 0)
        goto done;
    printf("%s: %s router, %s routing, %ld batches of %ld x %d tokens: loss %.4f, %.4f experts per token, "
           "%.2f%% of (token, layer) pairs with none; tables in %s\n",
           ckpt, etm_router_kind_name(hp.router), hp.router == ETM_ROUTER_TC ? "top-k" : o.mode, batches, o.B, hp.seq_len,
           n_valid ? loss_sum / (double)n_valid : NAN, etm_routing_report_mean_experts(rep),
           100 * etm_routing_report_zero_fraction(rep), out);
    rc = ETM_EXIT_OK;
done:
    if (rc != ETM_EXIT_OK) fprintf(stderr, "etmoe routing-profile: %s\n", err.msg);
    etm_routing_report_free(rep);
    etm_tokenizer_free(tok);
    etm_loader_free(ld);
    cli_ckpt_close(&c);
    return rc;
}
