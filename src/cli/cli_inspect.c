/* cli_inspect.c: `etmoe inspect`, a checkpoint's routing: each MoE layer's router state
 * (thresholds, EMAs, biases, counters) and, over data routed in evaluation mode, the load of each
 * expert, the experts-per-token histogram, the tokens left without a routed expert, the ET
 * authors' routing metrics (routing_metrics.h: shares of tokens with 0 / 1 / 2+ experts, mean and
 * std of routed gates and of logits), the routed experts' down-projection scale against the
 * shared ones (etm_expert_scale) and the tokens each expert takes most often. */
#include <config.h>

#include "backend.h"
#include "checkpoint.h"
#include "cli.h"
#include "cli_checkpoint.h"
#include "common.h"
#include "dump.h"
#include "loader.h"
#include "router.h"
#include "tokenizer.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(void) {
    printf("usage: etmoe inspect CHECKPOINT [--data SHARDS] [--batches N] [--batch B] [--top K]\n"
           "                     [--backend NAME]\n"
           "\n"
           "Shows each MoE layer's router state: thresholds, raw EMAs, selection biases and counters.\n"
           "With --data it also routes N batches of the shards (validation order) in evaluation mode,\n"
           "as the model is evaluated and sampled, and shows per layer the tokens each expert\n"
           "received, the histogram and mean of routed experts per token, the fraction of tokens\n"
           "with no routed expert, and the K tokens each expert takes most often (decoded with the\n"
           "config's tokenizer; 'of n' is how often the token occurs in the data).\n"
           "\n"
           "  --data SHARDS    token shards (a glob)\n"
           "  --batches N      batches to route (default: the config's eval_batches)\n"
           "  --batch B        sequences per batch (default: the config's batch_size)\n"
           "  --top K          tokens listed per expert (default 5, 0 for none)\n"
           "  --backend NAME   compute backend (default: the config's backend)\n"
           "  --help           this text\n");
}

static const char *rule_text(etm_route_rule r) {
    return r == ETM_RULE_TOPK ? "top-k per token" : r == ETM_RULE_EC ? "expert choice (no thresholds yet)"
                                                                      : "thresholds";
}

static void print_router_state(const etm_model *m) {
    int E = m->hp.n_routed;
    for (int l = 0; l < m->hp.n_layer; l++) {
        if (!m->moe[l]) continue;
        etm_router_state st;
        etm_moe_get_state(m->moe[l], &st);
        printf("layer %d: %lld threshold updates, %lld optimizer steps; evaluation routes by %s\n", l,
               (long long)st.counters[0], (long long)st.counters[1],
               rule_text(etm_router_rule(etm_moe_router(m->moe[l]), ETM_MOE_EVAL)));
        printf("  %-7s %12s %12s %12s\n", "expert", "threshold", "ema", "bias");
        for (int e = 0; e < E; e++)
            printf("  %-7d %12.6g %12.6g %12.6g\n", e, st.threshold[e], st.ema[e], st.bias[e]);
    }
}

/* Prints a token's bytes quoted, escaping what a terminal would not show. */
static void print_token(const etm_tokenizer *tok, int32_t id) {
    size_t len = 0;
    const char *bytes = tok ? etm_tokenizer_token_bytes(tok, id, &len) : NULL;
    if (!bytes) {
        printf("#%d", (int)id);
        return;
    }
    putchar('\'');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)bytes[i];
        if (c == '\n') fputs("\\n", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c == '\'' || c == '\\') printf("\\%c", c);
        else if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
        else putchar(c); /* UTF-8 continuation bytes pass through; split characters show as is */
    }
    putchar('\'');
}

static void print_stats(etm_inspect *s, const etm_model *m, const etm_tokenizer *tok, int top) {
    int E = s->E;
    int32_t *ids = etm_malloc((size_t)ETM_MAX(top, 1) * sizeof(int32_t));
    int64_t *counts = etm_malloc((size_t)ETM_MAX(top, 1) * sizeof(int64_t));
    for (int li = 0; li < s->n_layers; li++) {
        etm_inspect_layer *il = &s->layers[li];
        double mean = s->n_tokens ? (double)il->n_pairs / (double)s->n_tokens : 0;
        printf("\nlayer %d: %lld tokens, %lld routed pairs, %.4f experts per token, %.2f%% with no routed expert\n",
               il->layer, (long long)s->n_tokens, (long long)il->n_pairs, mean,
               s->n_tokens ? 100.0 * (double)il->hist[0] / (double)s->n_tokens : 0.0);
        printf("  experts per token:");
        int last = 0;
        for (int c = 0; c <= E; c++)
            if (il->hist[c]) last = c;
        for (int c = 0; c <= last; c++) printf(" %d:%lld", c, (long long)il->hist[c]);
        etm_routing_metrics rm;
        etm_routing_summary_metrics(&il->summary, &rm);
        printf("\n  tokens with 0 / 1 / 2+ experts: %.2f%% / %.2f%% / %.2f%%; routed gates mean %.4g std %.4g;"
               " logits mean %.4g std %.4g", 100 * rm.tokens_0, 100 * rm.tokens_1, 100 * rm.tokens_2plus,
               rm.gate_mean, rm.gate_std, rm.logit_mean, rm.logit_std);
        /* the routed experts' scale against the shared ones (routing_metrics.h), the checkpoint's
         * weights weighted by these batches' loads */
        double *rms = etm_malloc((size_t)E * sizeof *rms), shared;
        etm_moe_down_rms(m->moe[il->layer], &m->w.layers[il->layer].moe, rms, &shared);
        etm_expert_scale xs;
        etm_expert_scale_of(rms, il->load, E, rm.gate_mean, shared, &xs);
        free(rms);
        printf("\n  down projection RMS: routed (load-weighted) %.4g, shared %.4g; gate x routed down %.4g,"
               " %.4g of the shared", xs.down_rms, xs.shared_down_rms, xs.gate_down, xs.gate_down_ratio);
        printf("\n  %-7s %10s %8s %9s  %s\n", "expert", "tokens", "share", "vs mean", top > 0 ? "top tokens (count of n)" : "");
        double fair = (double)il->n_pairs / (double)E;
        for (int e = 0; e < E; e++) {
            printf("  %-7d %10lld %7.2f%% %8.2fx ", e, (long long)il->load[e],
                   il->n_pairs ? 100.0 * (double)il->load[e] / (double)il->n_pairs : 0.0,
                   fair > 0 ? (double)il->load[e] / fair : 0.0);
            int n = etm_inspect_top_tokens(s, li, e, top, ids, counts);
            for (int k = 0; k < n; k++) {
                putchar(' ');
                print_token(tok, ids[k]);
                printf(" %lld of %lld", (long long)counts[k], (long long)s->token_count[ids[k]]);
                if (k + 1 < n) putchar(',');
            }
            putchar('\n');
        }
    }
    free(ids);
    free(counts);
}

int cmd_inspect(int argc, char **argv) {
    const char *ckpt = NULL, *data = NULL, *backend = NULL;
    const char *batches_text = NULL, *batch_text = NULL, *top_text = NULL;
    const cli_option opts[] = {
        {"--data", &data, NULL},
        {"--batches", &batches_text, NULL},
        {"--batch", &batch_text, NULL},
        {"--top", &top_text, NULL},
        {"--backend", &backend, NULL},
    };
    int parsed = cli_parse_options("inspect", argc, argv, opts, ETM_ARRAY_LEN(opts), "checkpoint", &ckpt, usage);
    if (parsed != CLI_PARSED) return parsed == CLI_HELP_SHOWN ? ETM_EXIT_OK : parsed;
    if (!ckpt) return cli_usage_error("inspect", "no checkpoint given");
    cli_ckpt c;
    int rc = cli_ckpt_open(&c, "inspect", ckpt);
    if (rc != ETM_EXIT_OK) return rc;
    etm_hparams hp = c.hp;
    long batches = hp.eval_batches > 0 ? hp.eval_batches : 1, B = hp.batch_size, top = 5;
    if (batches_text && cli_parse_long(batches_text, 1, 1L << 30, &batches))
        return cli_usage_error("inspect", "--batches must be an integer in 1..%ld, not '%s'", 1L << 30, batches_text);
    if (batch_text && cli_parse_long(batch_text, 1, 1L << 20, &B))
        return cli_usage_error("inspect", "--batch must be an integer in 1..%ld, not '%s'", 1L << 20, batch_text);
    if (top_text && cli_parse_long(top_text, 0, 1L << 30, &top))
        return cli_usage_error("inspect", "--top must be an integer >= 0, not '%s'", top_text);

    etm_model *m = NULL;
    etm_loader *ld = NULL;
    etm_inspect *s = NULL;
    etm_tokenizer *tok = NULL;
    int32_t *inputs = NULL, *targets = NULL;
    rc = cli_ckpt_load(&c, backend, (int)B);
    if (rc != ETM_EXIT_OK) {
        cli_ckpt_close(&c);
        return rc;
    }
    rc = ETM_EXIT_FAIL;
    m = c.m;
    etm_error err = {{0}};
    printf("%s: router %s, %d layers, %d routed experts (top_k %d), %d shared\n", ckpt,
           etm_router_kind_name(hp.router),
           hp.n_layer, hp.n_routed, hp.top_k, hp.n_shared);
    s = etm_inspect_create(m);
    if (s->n_layers == 0) {
        printf("no MoE layers: nothing to inspect\n");
        rc = ETM_EXIT_OK;
        goto done;
    }
    print_router_state(m);
    if (!data) {
        rc = ETM_EXIT_OK;
        goto done;
    }
    ld = etm_loader_open(data, (int)B, hp.seq_len, hp.seed, 0, hp.vocab_size, &err);
    if (!ld) goto done;
    if (top > 0) {
        etm_error tok_err = {{0}};
        tok = etm_tokenizer_load(hp.tokenizer, &tok_err);
        if (!tok)
            fprintf(stderr, "etmoe inspect: tokens shown as ids: %s\n", tok_err.msg);
        else if (etm_tokenizer_vocab_size(tok) > hp.vocab_size) {
            fprintf(stderr, "etmoe inspect: tokens shown as ids: the tokenizer '%s' has %d tokens, the model %d\n",
                    hp.tokenizer, etm_tokenizer_vocab_size(tok), hp.vocab_size);
            etm_tokenizer_free(tok);
            tok = NULL;
        }
    }
    size_t n = (size_t)B * (size_t)hp.seq_len;
    inputs = etm_malloc(n * sizeof(int32_t));
    targets = etm_malloc(n * sizeof(int32_t));
    for (long b = 0; b < batches; b++)
        if (etm_loader_next(ld, inputs, targets, &err) != 0 || etm_inspect_add_batch(s, m, inputs, targets, (int)B, &err) != 0)
            goto done;
    printf("\nrouted %ld batch%s of %ld x %d tokens in evaluation mode; loss %.4f\n", batches, batches == 1 ? "" : "es", B,
           hp.seq_len, s->n_valid ? s->loss_sum / (double)s->n_valid : NAN);
    print_stats(s, m, tok, (int)top);
    rc = ETM_EXIT_OK;
done:
    if (rc != ETM_EXIT_OK) fprintf(stderr, "etmoe inspect: %s\n", err.msg);
    free(inputs);
    free(targets);
    etm_tokenizer_free(tok);
    etm_inspect_free(s);
    etm_loader_free(ld);
    cli_ckpt_close(&c);
    return rc;
}
