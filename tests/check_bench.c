/* check_bench.c: tests of the training-step benchmark (src/bench/bench.h) and the `etmoe bench` verb:
 * one timed step of tiny dense and ET models, whose reported FLOPs must equal the documented
 * formula recomputed here from the shapes, whose numbers must be finite and positive, and whose
 * profile must count the operations the model is known to call; the verb's usage errors. The
 * communication model (comm_model.h) against real models' parameter tables, the byte counts of
 * fold_sum (comm_timed.h) and the Muon shares (etm_optim_share) of data parallelism.
 * No timing thresholds: only what holds whatever the machine's speed. */
#include <config.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "bench.h"
#include "comm_model.h"
#include "comm_timed.h"
#include "model.h"
#include "optim.h"
#include "testutil.h"

/* V 61, T 8, D 32, 4 heads over 2 KV heads (head_dim 8), 2 layers (layer 0 dense, MLP 64),
 * ET: 4 routed experts + 1 shared of width 16, k = 1; batches of 2 sequences. */
static etm_hparams tiny_hp(etm_router_kind router) {
    etm_hparams hp = test_tiny_hparams(router);
    hp.vocab_size = 61;
    hp.n_layer = 2;
    hp.d_model = 32;
    hp.n_head = 4;
    hp.n_kv_head = 2;
    hp.ffn_hidden = 64;
    hp.et_warmup_steps = 1;
    hp.matrix_optimizer = ETM_OPT_MUON;
    hp.ns_steps = 5;
    snprintf(hp.backend, sizeof hp.backend, "cpu");
    etm_error err = {{0}};
    ck_assert_msg(etm_hparams_validate(&hp, &err) == 0, "%s", err.msg);
    return hp;
}

/* The formulas of bench.h, from the hyperparameters alone. */
static double expected_flops_per_token(const etm_hparams *hp, double routed) {
    double D = hp->d_model, hd = D / hp->n_head, H = hp->n_head, Hkv = hp->n_kv_head;
    double active = hp->vocab_size * D; /* LM head */
    for (int l = 0; l < hp->n_layer; l++) {
        active += D * H * hd * 2 + D * Hkv * hd * 2; /* wq, wo; wk, wv */
        if (hp->router == ETM_ROUTER_DENSE || l < hp->dense_layers)
            active += 2 * D * hp->ffn_hidden;
        else
            active += hp->n_routed * D + (hp->n_shared + routed) * 2 * D * hp->expert_hidden;
    }
    double attention = hp->n_layer * 2.0 * 2.0 * H * hd * (hp->seq_len + 1) / 2.0;
    return 3.0 * (2.0 * active + attention);
}

/* ns_steps (4 s^2 l + 2 s^3) per matrix, s and l its smaller and larger side: X X^T (2 s^2 l),
 * A A (2 s^3), B X (2 s^2 l); with muon_ns_gram = symmetric the first two are upper triangles,
 * half: ns_steps (3 s^2 l + s^3). */
static double ns_flops(const etm_hparams *hp, double count, double rows, double cols) {
    double s = rows < cols ? rows : cols, l = rows < cols ? cols : rows;
    if (hp->muon_ns_gram == ETM_NS_GRAM_SYMMETRIC)
        return count * hp->ns_steps * (s * s * l + s * s * s + 2 * s * s * l);
    return count * hp->ns_steps * (4 * s * s * l + 2 * s * s * s);
}

static double expected_optim_flops(const etm_hparams *hp) {
    double D = hp->d_model, hd = D / hp->n_head, H = hp->n_head, Hkv = hp->n_kv_head;
    double f = 0.0;
    for (int l = 0; l < hp->n_layer; l++) {
        f += ns_flops(hp, 1, H * hd, D) + 2 * ns_flops(hp, 1, Hkv * hd, D) + ns_flops(hp, 1, D, H * hd);
        if (hp->router == ETM_ROUTER_DENSE || l < hp->dense_layers) {
            f += ns_flops(hp, 1, hp->ffn_hidden, D) + ns_flops(hp, 1, D, hp->ffn_hidden);
        } else { /* the router is AdamW's */
            f += 2 * ns_flops(hp, hp->n_routed, hp->expert_hidden, D);
            f += 2 * ns_flops(hp, hp->n_shared, hp->expert_hidden, D);
        }
    }
    return f;
}

#define ck_assert_positive(x) ck_assert_msg(isfinite(x) && (x) > 0.0, "%s = %g", #x, (double)(x))

static void check_result(const etm_hparams *hp, const etm_bench_result *r, int steps) {
    double tokens = (double)hp->batch_size * hp->seq_len;
    ck_assert_int_eq(r->steps, steps);
    ck_assert_int_eq(r->batch, hp->batch_size);
    ck_assert_int_eq(r->seq_len, hp->seq_len);
    ck_assert(r->tokens_per_step == tokens);
    if (hp->router == ETM_ROUTER_DENSE) {
        ck_assert(r->routed_per_token == 0.0);
        ck_assert_int_eq(r->timed_threshold_steps, 0);
    } else {
        ck_assert_positive(r->routed_per_token);
        ck_assert(r->routed_per_token <= hp->n_routed);
        ck_assert_int_eq(r->timed_threshold_steps, steps); /* warm-up 1 = et_warmup_steps */
    }
    double want = expected_flops_per_token(hp, r->routed_per_token);
    ck_assert_msg(fabs(r->flops_per_token - want) <= 1e-12 * want, "FLOPs per token %.17g, formula %.17g",
                  r->flops_per_token, want);
    ck_assert_msg(fabs(r->flops_per_step - want * tokens) <= 1e-12 * want * tokens,
                  "FLOPs per step %.17g, formula %.17g", r->flops_per_step, want * tokens);
    double want_opt = expected_optim_flops(hp);
    ck_assert_msg(fabs(r->optim_flops - want_opt) <= 1e-12 * want_opt, "optimizer FLOPs %.17g, formula %.17g",
                  r->optim_flops, want_opt);

    ck_assert_positive(r->params);
    ck_assert_positive(r->active_params);
    ck_assert_positive(r->fwd_s);
    ck_assert_positive(r->bwd_s);
    ck_assert_positive(r->opt_s);
    ck_assert_positive(r->best_fwdbwd_s);
    ck_assert_positive(r->best_opt_s);
    ck_assert_positive(r->best_step_s);
    ck_assert_positive(r->tokens_per_s);
    ck_assert_positive(r->gflops);
    ck_assert_positive(r->best_tokens_per_s);
    ck_assert_positive(r->best_gflops);
    ck_assert_positive(r->step_tokens_per_s);
    ck_assert_positive(r->optim_gflops);
    ck_assert_positive(r->ceiling_before);
    ck_assert_positive(r->ceiling_after);
    ck_assert_positive(r->ceiling);
    ck_assert_positive(r->ratio);
    ck_assert_positive(r->best_ratio);
    /* the derived figures are what they say they are */
    double fb = r->fwd_s + r->bwd_s;
    ck_assert(fabs(r->tokens_per_s - tokens / fb) <= 1e-9 * r->tokens_per_s);
    ck_assert(fabs(r->gflops - r->flops_per_step / fb * 1e-9) <= 1e-9 * r->gflops);
    ck_assert(r->best_ratio >= r->ratio * (1 - 1e-12));
    if (steps == 1) { /* the step against the mean of the ceilings before and after it */
        ck_assert(fabs(r->best_ratio - r->ratio) <= 1e-12 * r->ratio);
        double around = 0.5 * (r->ceiling_before + r->ceiling_after);
        ck_assert_msg(fabs(r->ratio - r->gflops / around) <= 1e-9 * r->ratio, "ratio %g, %g / %g",
                      r->ratio, r->gflops, around);
    }
    ck_assert(r->ceiling_min <= r->ceiling * (1 + 1e-12) && r->ceiling <= r->ceiling_max * (1 + 1e-12));
    ck_assert_positive(r->ceiling_min);
    ck_assert(fabs(r->step_tokens_per_s - tokens / (fb + r->opt_s)) <= 1e-9 * r->step_tokens_per_s);
    ck_assert(r->best_fwdbwd_s <= fb * (1 + 1e-12) && r->best_step_s <= fb + r->opt_s + 1e-12);
    ck_assert_int_eq(r->ceiling_m, hp->batch_size * hp->seq_len);
    ck_assert_int_eq(r->ceiling_n, hp->ffn_hidden);
    ck_assert_int_eq(r->ceiling_k, hp->d_model);
}

static const etm_bench_op *find_op(const etm_bench_profile *p, const char *name) {
    for (int i = 0; i < p->n_ops; i++)
        if (!strcmp(p->ops[i].name, name)) return &p->ops[i];
    return NULL;
}

static void run_one_gram(etm_router_kind router, int profile, etm_ns_gram gram) {
#ifdef _OPENMP
    omp_set_num_threads(2);
#endif
    etm_hparams hp = tiny_hp(router);
    hp.muon_ns_gram = gram;
    etm_error err = {{0}};
    etm_backend *be = etm_backend_create("cpu", &err);
    ck_assert_msg(be != NULL, "%s", err.msg);
    etm_bench_options opt;
    etm_bench_default_options(&opt);
    opt.steps = 1;
    opt.warmup = 1;
    opt.ceiling_reps = 1;
    opt.profile = profile;
    etm_bench_result *r = malloc(sizeof *r);
    ck_assert_msg(etm_bench_run(be, &hp, &opt, r, &err) == 0, "%s", err.msg);
    check_result(&hp, r, 1);
    ck_assert_int_eq(r->profiled, profile);
    if (profile) {
        const etm_bench_profile *fb = &r->profile[ETM_BENCH_FWDBWD], *op = &r->profile[ETM_BENCH_OPTIM];
        /* the model's known calls: attention once per layer each way, one cross-entropy */
        const etm_bench_op *o = find_op(fb, "attention_forward");
        ck_assert(o && o->calls == hp.n_layer);
        o = find_op(fb, "attention_backward");
        ck_assert(o && o->calls == hp.n_layer);
        o = find_op(fb, "xent_forward");
        ck_assert(o && o->calls == 1);
        o = find_op(fb, "gemm");
        ck_assert(o && o->calls > 0 && o->gflop > 0);
        ck_assert(find_op(fb, "adamw_update") == NULL); /* no optimizer work in forward + backward */
        /* AdamW for the embedding, the head and each MoE layer's router; Muon's GEMMs */
        int adamw = 2 + (router == ETM_ROUTER_DENSE ? 0 : hp.n_layer - hp.dense_layers);
        o = find_op(op, "adamw_update");
        ck_assert_msg(o && o->calls == adamw, "adamw_update calls %g, want %d", o ? o->calls : -1.0, adamw);
        ck_assert(find_op(op, "gemm") != NULL);
        ck_assert(find_op(op, "attention_forward") == NULL);
        /* the symmetric products: two per Newton-Schulz iteration of every Muon tensor */
        o = find_op(op, "syrk_batched");
        if (gram == ETM_NS_GRAM_SYMMETRIC)
            ck_assert_msg(o && o->calls > 0 && fmod(o->calls, 2 * hp.ns_steps) == 0, "syrk_batched calls %g",
                          o ? o->calls : -1.0);
        else
            ck_assert(o == NULL);
        /* operations are timed inside their phase: their sum cannot exceed it */
        ck_assert(fb->ops_s <= fb->step_s + 1e-9 && op->ops_s <= op->step_s + 1e-9);
        ck_assert(fb->step_s == r->fwd_s + r->bwd_s && op->step_s == r->opt_s);
    }
    /* the printout names the numbers */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    etm_bench_print(f, r);
    fclose(f);
    ck_assert(strstr(text, "tokens/s") && strstr(text, "GFLOP/s") && strstr(text, "of the ceiling around each step"));
    ck_assert(strstr(text, "optimizer step"));
    if (profile) ck_assert(strstr(text, "forward + backward, per step, by backend operation") &&
                           strstr(text, "optimizer, per step, by backend operation"));
    free(text);
    free(r);
    etm_backend_free(be);
}

static void run_one(etm_router_kind router, int profile) { run_one_gram(router, profile, ETM_NS_GRAM_FULL); }

START_TEST(test_dense_one_step) { run_one(ETM_ROUTER_DENSE, 0); }
END_TEST

START_TEST(test_et_one_step_profiled) { run_one(ETM_ROUTER_ET, 1); }
END_TEST

START_TEST(test_dense_profiled) { run_one(ETM_ROUTER_DENSE, 1); }
END_TEST

/* muon_ns_gram = symmetric: the optimizer's FLOP count follows it (check_result's formula) and is
 * 3 s^2 l + s^3 against 4 s^2 l + 2 s^3 of the default. */
START_TEST(test_et_symmetric_gram) {
    run_one_gram(ETM_ROUTER_ET, 1, ETM_NS_GRAM_SYMMETRIC);
    etm_hparams hp = tiny_hp(ETM_ROUTER_ET);
    double full = expected_optim_flops(&hp);
    hp.muon_ns_gram = ETM_NS_GRAM_SYMMETRIC;
    double sym = expected_optim_flops(&hp);
    ck_assert_msg(sym < 0.8 * full && sym > 0.6 * full, "symmetric %g, full %g", sym, full);
}
END_TEST

START_TEST(test_bad_options) {
    etm_hparams hp = tiny_hp(ETM_ROUTER_DENSE);
    etm_error err = {{0}};
    etm_backend *be = etm_backend_create("cpu", &err);
    ck_assert(be != NULL);
    etm_bench_options opt;
    etm_bench_default_options(&opt);
    opt.steps = 0;
    etm_bench_result r;
    ck_assert_int_eq(etm_bench_run(be, &hp, &opt, &r, &err), -1);
    ck_assert_msg(strstr(err.msg, "steps") != NULL, "%s", err.msg);
    etm_bench_default_options(&opt);
    hp.n_kv_head = 3; /* does not divide n_head */
    ck_assert_int_eq(etm_bench_run(be, &hp, &opt, &r, &err), -1);
    ck_assert_msg(strstr(err.msg, "n_kv_head") != NULL, "%s", err.msg);
    etm_backend_free(be);
}
END_TEST

/* The verb, as built beside the tests (make check builds ./etmoe first). */
static int run_etmoe(const char *args) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "./etmoe bench %s >/dev/null 2>&1", args);
    int st = system(cmd);
    ck_assert_msg(st != -1 && WIFEXITED(st), "could not run '%s'", cmd);
    return WEXITSTATUS(st);
}

START_TEST(test_verb_usage) {
    ck_assert_msg(access("./etmoe", X_OK) == 0, "./etmoe not built in the test directory");
    ck_assert_int_eq(run_etmoe("--help"), 0);
    ck_assert_int_eq(run_etmoe(""), 2);                            /* no config */
    ck_assert_int_eq(run_etmoe("demo --steps 0"), 2);              /* not positive */
    ck_assert_int_eq(run_etmoe("demo --steps"), 2);                /* missing value */
    ck_assert_int_eq(run_etmoe("demo --warmup x"), 2);
    ck_assert_int_eq(run_etmoe("demo --frobnicate"), 2);           /* unknown option */
    ck_assert_int_eq(run_etmoe("demo no_such_key=1"), 2);          /* unknown key */
    ck_assert_int_eq(run_etmoe("demo d_model=banana"), 2);         /* bad value */
    ck_assert_int_eq(run_etmoe("/nonexistent/x.conf"), 2);         /* no such config */
    ck_assert_int_eq(run_etmoe("demo demo"), 2);                   /* two configs */
}
END_TEST

/* The verb end to end on a small model: one step, exit 0. */
START_TEST(test_verb_runs) {
    ck_assert_int_eq(run_etmoe("demo vocab_size=64 seq_len=16 n_layer=2 d_model=32 n_head=4 n_kv_head=2 "
                               "ffn_hidden=64 expert_hidden=32 batch_size=2 et_warmup_steps=1 "
                               "--steps 1 --profile --backend cpu"),
                     0);
    ck_assert_int_eq(run_etmoe("demo vocab_size=64 seq_len=16 n_layer=2 d_model=32 n_head=4 n_kv_head=2 "
                               "ffn_hidden=64 batch_size=2 --steps 1 --backend nosuch"),
                     1);
}
END_TEST

/* The comm model's counts, from the hyperparameters alone, against the model etm_model_create
 * builds: parameters, Muon and AdamW elements, the routed experts', Newton-Schulz and training
 * FLOPs. */
static void check_comm_model(etm_hparams hp) {
    etm_error err = {{0}};
    etm_backend *be = etm_backend_create("cpu", &err);
    ck_assert_msg(be != NULL, "%s", err.msg);
    etm_model *m = etm_model_create(be, &hp, hp.batch_size, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    double all = 0, muon = 0, experts = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const etm_param *p = &m->table[i];
        double n = 1;
        for (int d = 0; d < p->ndim; d++) n *= (double)p->shape[d];
        all += n;
        if (p->group == ETM_PARAM_MATRIX && hp.matrix_optimizer == ETM_OPT_MUON) muon += n;
        if (strstr(p->name, ".moe.up") || strstr(p->name, ".moe.down")) experts += n;
    }
    ck_assert(all == (double)etm_model_num_params(m));
    etm_comm_machine mc;
    etm_comm_machine_default(&mc);
    for (int ranks = 1; ranks <= 2; ranks++) {
        hp.grad_accum = 4;
        etm_comm_model cm;
        ck_assert_msg(etm_comm_model_compute(&hp, ranks, &mc, &cm, &err) == 0, "%s", err.msg);
        ck_assert_msg(cm.params == all, "comm model %.0f parameters, the model %.0f", cm.params, all);
        ck_assert_msg(cm.muon_params == muon, "Muon %.0f, the model %.0f", cm.muon_params, muon);
        ck_assert(cm.adamw_params == all - muon);
        ck_assert_msg(cm.expert_params == experts, "experts %.0f, the model %.0f", cm.expert_params, experts);
        double k = hp.router == ETM_ROUTER_DENSE ? 0 : hp.top_k;
        ck_assert(cm.flops_per_token == etm_model_train_flops_per_token(m, hp.seq_len, k));
        if (hp.muon_expert_layout == ETM_MUON_PER_EXPERT) /* bench's optimizer count is per expert */
            ck_assert_msg(fabs(cm.optim_flops - etm_bench_optim_flops(&hp, m->table, m->n_tensors)) <=
                              1e-12 * cm.optim_flops, "NS FLOPs %g", cm.optim_flops);
        ck_assert(cm.tokens_per_step == 4.0 * hp.batch_size * hp.seq_len);
        ck_assert_int_eq(cm.accum_per_rank, 4 / ranks);
        if (ranks == 1) {
            ck_assert(cm.sent == 0 && cm.received == 0 && cm.nvlink_s == 0);
        } else { /* 2 ranks, 2 micro-batches each: rank 0 sends 2 halves, gets 2 halves + a half */
            double half = ceil(all / 2) * sizeof(float), other = all * sizeof(float) - half;
            ck_assert(cm.reduce_sent == 2 * other + half);
            ck_assert(cm.reduce_received == 2 * half + other);
            ck_assert(cm.muon_received == muon * sizeof(float) / 2); /* the half rank 1 owns */
            ck_assert_positive(cm.compute_s);
            ck_assert_positive(cm.network_s);
        }
    }
    hp.grad_accum = 3;
    etm_comm_model cm;
    ck_assert_int_eq(etm_comm_model_compute(&hp, 2, &mc, &cm, &err), -1);
    ck_assert_msg(strstr(err.msg, "multiple") != NULL, "%s", err.msg);
    etm_model_free(m);
    etm_backend_free(be);
}

START_TEST(test_comm_model_counts) {
    etm_hparams hp = tiny_hp(ETM_ROUTER_ET);
    check_comm_model(hp);
    hp.muon_expert_layout = ETM_MUON_STACKED;
    check_comm_model(hp);
    hp = tiny_hp(ETM_ROUTER_ET);
    hp.muon_ns_gram = ETM_NS_GRAM_SYMMETRIC;
    check_comm_model(hp);
    hp = tiny_hp(ETM_ROUTER_DENSE);
    check_comm_model(hp);
    hp = tiny_hp(ETM_ROUTER_TC);
    hp.n_shared = 0;
    hp.matrix_optimizer = ETM_OPT_ADAMW;
    check_comm_model(hp);
}
END_TEST

/* fold_sum's byte counts: whatever the split, what the ranks send is what they receive, and each
 * rank's figures follow the shards. */
START_TEST(test_fold_bytes) {
    const size_t ns[] = {1, 7, 1000, 1001};
    for (size_t i = 0; i < ETM_ARRAY_LEN(ns); i++)
        for (int P = 1; P <= 5; P++)
            for (int A = 1; A <= 3; A++) {
                double sent = 0, received = 0;
                for (int r = 0; r < P; r++) {
                    double s, v;
                    etm_comm_fold_bytes(ns[i], A, P, r, &s, &v);
                    size_t lo, len;
                    etm_comm_shard(ns[i], P, r, &lo, &len);
                    ck_assert(v == sizeof(float) * ((double)(P - 1) * A * len + (double)(ns[i] - len)));
                    sent += s;
                    received += v;
                }
                ck_assert_msg(sent == received, "n %zu, %d ranks x %d: sent %g, received %g", ns[i], P, A,
                              sent, received);
                if (P == 1) ck_assert(sent == 0);
            }
}
END_TEST

/* The Muon shares: every Muon parameter has one owner among the ranks, the rest none; the shares
 * are balanced by Newton-Schulz FLOPs within the largest single parameter's cost (longest first). */
START_TEST(test_muon_shares) {
    etm_hparams hp = tiny_hp(ETM_ROUTER_ET);
    hp.n_layer = 4;
    etm_error err = {{0}};
    etm_backend *be = etm_backend_create("cpu", &err);
    etm_model *m = etm_model_create(be, &hp, hp.batch_size, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    etm_optim *opt = etm_optim_create(be, &hp, m->table, m->n_tensors, &err);
    ck_assert_msg(opt != NULL, "%s", err.msg);
    for (int P = 1; P <= 5; P++) {
        double load[5] = {0}, largest = 0;
        etm_optim_share(opt, 0, P);
        for (int i = 0; i < m->n_tensors; i++) {
            int o = etm_optim_muon_owner(opt, i);
            double c = etm_bench_optim_flops(&hp, &m->table[i], 1);
            if (m->table[i].group != ETM_PARAM_MATRIX) {
                ck_assert_int_eq(o, -1);
                continue;
            }
            ck_assert(o >= 0 && o < P);
            load[o] += c;
            largest = c > largest ? c : largest;
        }
        double lo = load[0], hi = load[0];
        for (int r = 1; r < P; r++) {
            lo = load[r] < lo ? load[r] : lo;
            hi = load[r] > hi ? load[r] : hi;
        }
        ck_assert_msg(hi - lo <= largest, "%d ranks: Newton-Schulz loads %g to %g, largest parameter %g", P,
                      lo, hi, largest);
    }
    etm_optim_free(opt);
    etm_model_free(m);
    etm_backend_free(be);
}
END_TEST

START_TEST(test_verb_comm_model) {
    ck_assert_int_eq(run_etmoe("d12 --comm-model"), 0);
    ck_assert_int_eq(run_etmoe("d20 --comm-model --ranks 16"), 0);
    ck_assert_int_eq(run_etmoe("d12 --comm-model --ranks 3"), 2); /* 8 micro-batches */
    ck_assert_int_eq(run_etmoe("d12 --comm-model --ranks 0"), 2);
    ck_assert_int_eq(run_etmoe("demo --ranks 2"), 2);              /* without --comm-model */
}
END_TEST

static Suite *bench_suite(void) {
    Suite *s = suite_create("bench");
    TCase *tc = tcase_create("bench");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_dense_one_step);
    tcase_add_test(tc, test_et_one_step_profiled);
    tcase_add_test(tc, test_dense_profiled);
    tcase_add_test(tc, test_et_symmetric_gram);
    tcase_add_test(tc, test_bad_options);
    tcase_add_test(tc, test_verb_usage);
    tcase_add_test(tc, test_verb_runs);
    tcase_add_test(tc, test_comm_model_counts);
    tcase_add_test(tc, test_fold_bytes);
    tcase_add_test(tc, test_muon_shares);
    tcase_add_test(tc, test_verb_comm_model);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return test_run_suite(bench_suite()); }
