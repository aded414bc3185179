/* cli_generate.c: `etmoe generate`, text from a checkpoint: the prompt encoded with the config's
 * tokenizer, KV-cache decoding with MoE layers routing each token alone (ETM_MOE_EVAL), sampling
 * with temperature and top-k from a seeded RNG, the text streamed to stdout; optionally each
 * token coloured or annotated by the routed experts it used, and an HTML page of the same. */
#include <config.h>

#include "backend.h"
#include "checkpoint.h"
#include "cli.h"
#include "cli_checkpoint.h"
#include "common.h"
#include "generate.h"
#include "router.h"
#include "tokenizer.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_TOKENS 100
#define DEFAULT_TEMPERATURE 1.0f
#define DEFAULT_SEED 42

static void usage(void) {
    printf("usage: etmoe generate CHECKPOINT --prompt TEXT [--tokens N] [--temperature T] [--top-k K]\n"
           "                      [--seed S] [--show-experts] [--color WHEN] [--html FILE]\n"
           "                      [--tokenizer NAME] [--backend NAME]\n"
           "\n"
           "Continues TEXT with the model of CHECKPOINT and writes prompt and continuation to stdout as\n"
           "the tokens come. The prompt is encoded with the checkpoint's tokenizer after an\n"
           "<|endoftext|> token (every training document starts with one); generation stops after N\n"
           "tokens, when the model samples <|endoftext|>, or when its context (seq_len) is full.\n"
           "Tokens are decoded one at a time with a key/value cache; MoE layers route each token alone\n"
           "with the checkpoint's frozen router state (ET and EC by their thresholds, TC by top-k), as\n"
           "in evaluation. The same checkpoint, prompt, options and seed give the same text.\n"
           "\n"
           "  --prompt TEXT      the text to continue (may be empty)\n"
           "  --tokens N         tokens to generate at most (default %d)\n"
           "  --temperature T    softmax temperature; 0 = greedy, the most likely token (default %g)\n"
           "  --top-k K          sample among the K most likely tokens only; 0 = all (default 0)\n"
           "  --seed S           seed of the sampling RNG (default %d)\n"
           "  --show-experts     show how many routed experts each token (prompt and generated) used,\n"
           "                     summed over the MoE layers: on a terminal as background colours with a\n"
           "                     legend, otherwise as text[n] after each token\n"
           "  --color WHEN       colours for --show-experts: auto (a terminal, NO_COLOR unset), always\n"
           "                     or never (default auto)\n"
           "  --html FILE        also write the tokens, coloured by routed experts with a per-layer\n"
           "                     tooltip, legend and per-layer means, as a self-contained HTML page\n"
           "  --tokenizer NAME   tokenizer to use instead of the config's (a merges file or a shipped name)\n"
           "  --backend NAME     compute backend (default: the config's)\n"
           "  --help             this text\n"
           "\n"
           "A summary (tokens, speed, mean routed experts) goes to stderr.\n",
           DEFAULT_TOKENS, (double)DEFAULT_TEMPERATURE, DEFAULT_SEED);
}

static int parse_u64(const char *text, uint64_t *out) {
    char *end;
    errno = 0;
    if (!*text || *text == '-' || *text == '+' || *text == ' ') return -1;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int parse_float(const char *text, float *out) {
    char *end;
    errno = 0;
    float v = strtof(text, &end);
    if (errno || end == text || *end || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

typedef struct {
    etm_token_writer w;
    etm_expert_trace *trace;   /* NULL when neither --show-experts nor --html */
    const etm_tokenizer *tok;
    int skip;                  /* leading tokens not shown (the <|endoftext|> before the prompt) */
    int show_prompt;           /* the prompt's tokens go through the writer (--show-experts) */
    int budget;
    double experts_prompt, experts_gen; /* routed experts summed over tokens and MoE layers */
    int n_prompt, n_gen;
} gen_ctx;

static int on_token(void *p, const etm_gen_event *ev) {
    gen_ctx *g = p;
    if (ev->pos < g->skip) return 0;
    int total = 0;
    for (int j = 0; j < ev->n_moe; j++) total += ev->experts[j];
    if (ev->generated) {
        g->experts_gen += total;
        g->n_gen++;
    } else {
        g->experts_prompt += total;
        g->n_prompt++;
    }
    if (g->trace) etm_trace_add(g->trace, ev->token, ev->generated, ev->experts);
    if (ev->generated || g->show_prompt) {
        size_t len = 0;
        const char *bytes = etm_tokenizer_token_bytes(g->tok, ev->token, &len);
        etm_token_writer_put(&g->w, bytes ? bytes : "", bytes ? len : 0, total, g->budget);
        fflush(g->w.f);
    }
    return 0;
}

int cmd_generate(int argc, char **argv) {
    const char *ckpt = NULL, *prompt = NULL, *html = NULL, *backend = NULL, *tokenizer = NULL;
    const char *tokens_text = NULL, *temp_text = NULL, *topk_text = NULL, *seed_text = NULL, *color = "auto";
    int show_experts = 0;
    const cli_option opts[] = {
        {"--prompt", &prompt, NULL},
        {"--tokens", &tokens_text, NULL},
        {"--temperature", &temp_text, NULL},
        {"--top-k", &topk_text, NULL},
        {"--seed", &seed_text, NULL},
        {"--color", &color, NULL},
        {"--html", &html, NULL},
        {"--tokenizer", &tokenizer, NULL},
        {"--backend", &backend, NULL},
        {"--show-experts", NULL, &show_experts},
    };
    int parsed = cli_parse_options("generate", argc, argv, opts, ETM_ARRAY_LEN(opts), "checkpoint", &ckpt, usage);
    if (parsed != CLI_PARSED) return parsed == CLI_HELP_SHOWN ? ETM_EXIT_OK : parsed;
    if (!ckpt) return cli_usage_error("generate", "no checkpoint given");
    if (!prompt) return cli_usage_error("generate", "no prompt given (--prompt TEXT; it may be empty)");
    long n_tokens = DEFAULT_TOKENS, top_k = 0;
    float temperature = DEFAULT_TEMPERATURE;
    uint64_t seed = DEFAULT_SEED;
    if (tokens_text && cli_parse_long(tokens_text, 0, 1L << 30, &n_tokens))
        return cli_usage_error("generate", "--tokens must be an integer >= 0, not '%s'", tokens_text);
    if (temp_text && (parse_float(temp_text, &temperature) || temperature < 0.0f))
        return cli_usage_error("generate", "--temperature must be a finite number >= 0, not '%s'", temp_text);
    if (topk_text && cli_parse_long(topk_text, 0, 1L << 30, &top_k))
        return cli_usage_error("generate", "--top-k must be an integer >= 0 (0: no limit), not '%s'", topk_text);
    if (seed_text && parse_u64(seed_text, &seed))
        return cli_usage_error("generate", "--seed must be an integer in 0..2^64-1, not '%s'", seed_text);
    int colour;
    if (!strcmp(color, "always")) colour = 1;
    else if (!strcmp(color, "never")) colour = 0;
    else if (!strcmp(color, "auto")) {
        const char *term = getenv("TERM"), *no_color = getenv("NO_COLOR");
        colour = isatty(STDOUT_FILENO) && !(no_color && *no_color) && !(term && !strcmp(term, "dumb"));
    } else
        return cli_usage_error("generate", "--color must be auto, always or never, not '%s'", color);
    if (html && !*html) return cli_usage_error("generate", "--html needs a file name");
    cli_ckpt c;
    int rc = cli_ckpt_open(&c, "generate", ckpt);
    if (rc != ETM_EXIT_OK) return rc;
    etm_hparams hp = c.hp;
    etm_error err = {{0}};
    rc = ETM_EXIT_FAIL;
    etm_tokenizer *tok = NULL;
    etm_model *m = NULL;
    etm_expert_trace *trace = NULL;
    int32_t *ids = NULL, *seq = NULL;
    char *page = NULL;
    int *layers = NULL;

    const char *tok_name = tokenizer ? tokenizer : hp.tokenizer;
    tok = etm_tokenizer_load(tok_name, &err);
    if (!tok) goto done;
    if (etm_tokenizer_vocab_size(tok) > hp.vocab_size) {
        etm_fail(&err, "the tokenizer '%s' has %d tokens but the model of %s only %d", tok_name,
                 etm_tokenizer_vocab_size(tok), ckpt, hp.vocab_size);
        goto done;
    }
    rc = cli_ckpt_load(&c, backend, 1);
    if (rc != ETM_EXIT_OK) {
        rc = rc == ETM_EXIT_FAIL ? -1 : rc; /* cli_ckpt_load printed the message */
        goto done;
    }
    rc = ETM_EXIT_FAIL;
    m = c.m;

    size_t n_ids = 0;
    ids = etm_tokenizer_encode(tok, prompt, strlen(prompt), &n_ids);
    int32_t eot = etm_tokenizer_eot(tok);
    if ((long)n_ids + 1 > hp.seq_len) {
        fprintf(stderr, "etmoe generate: the prompt is %zu tokens; with the <|endoftext|> before it that is more "
                        "than the model's context of %d\n", n_ids, hp.seq_len);
        rc = ETM_EXIT_USAGE;
        goto done;
    }
    seq = etm_malloc((n_ids + 1) * sizeof(int32_t));
    seq[0] = eot;
    memcpy(seq + 1, ids, n_ids * sizeof(int32_t));

    layers = etm_malloc((size_t)hp.n_layer * sizeof(int));
    int n_moe = etm_gen_moe_layers(m, layers);
    for (int j = 0; j < n_moe; j++) {
        if (hp.router == ETM_ROUTER_TC) break;
        if (etm_router_rule(etm_moe_router(m->moe[layers[j]]), ETM_MOE_EVAL) != ETM_RULE_THRESHOLD) {
            fprintf(stderr, "etmoe generate: warning: layer %d has no thresholds yet (the checkpoint predates its "
                            "first update); one token alone is routed by expert choice, to every expert\n",
                    layers[j]);
            break;
        }
    }
    if (show_experts && n_moe == 0) {
        fprintf(stderr, "etmoe generate: the model has no MoE layers; --show-experts shows the plain text\n");
        show_experts = 0;
    }

    gen_ctx g;
    memset(&g, 0, sizeof g);
    g.tok = tok;
    g.skip = 1;
    g.show_prompt = show_experts;
    if (show_experts || html) trace = etm_trace_create(n_moe, layers, hp.n_routed, hp.top_k);
    g.trace = trace;
    g.budget = hp.top_k * n_moe;
    etm_show_mode mode = !show_experts ? ETM_SHOW_PLAIN : colour ? ETM_SHOW_ANSI : ETM_SHOW_ANNOTATED;
    etm_token_writer_init(&g.w, stdout, mode);
    if (!show_experts) {
        fputs(prompt, stdout);
        fflush(stdout);
    }

    etm_gen_options o;
    memset(&o, 0, sizeof o);
    o.prompt = seq;
    o.n_prompt = (int)n_ids + 1;
    o.max_new = (int)n_tokens;
    o.n_vocab = etm_tokenizer_vocab_size(tok);
    o.stop_token = eot;
    o.sampling.temperature = temperature;
    o.sampling.top_k = (int)top_k;
    o.seed = seed;
    o.on_token = on_token;
    o.ctx = &g;
    etm_gen_result res;
    double t0 = etm_now();
    if (etm_generate(m, &o, &res, &err) != 0) {
        etm_token_writer_finish(&g.w);
        fputc('\n', stdout);
        goto done;
    }
    double secs = etm_now() - t0;
    etm_token_writer_finish(&g.w);
    fputc('\n', stdout);
    if (show_experts) {
        fputc('\n', stdout);
        etm_print_legend(stdout, mode, trace);
    }
    fflush(stdout);

    const char *why = res.end == ETM_GEN_STOP_TOKEN ? "the model ended the text (<|endoftext|>)"
                      : res.end == ETM_GEN_CONTEXT  ? "the context is full"
                                                    : "token limit";
    fprintf(stderr, "etmoe generate: %d prompt tokens after <|endoftext|>, %d generated (%s); %d decoded in %.2f s, "
                    "%.1f tokens/s; seed %llu\n",
            o.n_prompt - 1, res.n_generated, why, o.n_prompt + res.n_generated, secs,
            secs > 0 ? (o.n_prompt + res.n_generated) / secs : 0.0, (unsigned long long)seed);
    if (n_moe > 0)
        fprintf(stderr, "etmoe generate: routed experts per token and MoE layer (%d layers, %s, top_k %d): "
                        "prompt %.3f, generated %.3f\n",
                n_moe, etm_router_kind_name(hp.router), hp.top_k,
                g.n_prompt ? g.experts_prompt / g.n_prompt / n_moe : 0.0,
                g.n_gen ? g.experts_gen / g.n_gen / n_moe : 0.0);

    if (html) {
        char heading[1536];
        snprintf(heading, sizeof heading,
                 "%s: router %s, %d layers (%d MoE), %d routed experts, top_k %d; temperature %g, top-k %ld, "
                 "seed %llu; %d prompt tokens, %d generated.",
                 ckpt, etm_router_kind_name(hp.router), hp.n_layer, n_moe, hp.n_routed, hp.top_k, (double)temperature,
                 top_k, (unsigned long long)seed, g.n_prompt, g.n_gen);
        size_t len = 0;
        page = etm_trace_html(trace, tok, "etmoe generate: routed experts per token", heading, &len);
        if (etm_write_file_atomic(html, page, len, &err) != 0) goto done;
        fprintf(stderr, "etmoe generate: wrote %s\n", html);
    }
    rc = ETM_EXIT_OK;
done:
    if (rc == ETM_EXIT_FAIL) fprintf(stderr, "etmoe generate: %s\n", err.msg);
    free(page);
    free(layers);
    free(seq);
    free(ids);
    etm_trace_free(trace);
    cli_ckpt_close(&c);
    etm_tokenizer_free(tok);
    return rc < 0 ? ETM_EXIT_FAIL : rc;
}
