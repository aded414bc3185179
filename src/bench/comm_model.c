/* comm_model.c: bytes and times of a data-parallel step on paper (comm_model.h). */
#include <config.h>

#include "comm_model.h"

#include <string.h>

#include "comm_timed.h"
#include "model.h"
#include "optim.h"

void etm_comm_machine_default(etm_comm_machine *mc) {
    mc->peak_flops = 989e12;
    mc->mfu = 0.4;
    mc->nvlink_bps = 450e9;
    mc->network_bps = 50e9;
}

/* Newton-Schulz FLOPs of count matrices (rows, cols) (etm_newton_schulz_flops, bench.h). */
static double ns(const etm_hparams *hp, double count, double rows, double cols) {
    return count * etm_newton_schulz_flops(hp, (int)rows, (int)cols);
}

int etm_comm_model_compute(const etm_hparams *hp, int ranks, const etm_comm_machine *mc,
                           etm_comm_model *out, etm_error *err) {
    if (etm_hparams_validate(hp, err) != 0) return -1;
    if (ranks < 1 || hp->grad_accum % ranks != 0)
        return etm_fail(err, "--comm-model: grad_accum %d (micro-batches per step) is not a multiple "
                        "of %d ranks", hp->grad_accum, ranks);
    memset(out, 0, sizeof *out);
    const int N = ranks, A = hp->grad_accum / ranks;
    double V = hp->vocab_size, D = hp->d_model, hd = etm_head_dim(hp), HD = hp->n_head * hd;
    double KVD = hp->n_kv_head * hd, F = hp->ffn_hidden, E = hp->n_routed, S = hp->n_shared;
    double Hx = hp->expert_hidden;
    int muon = hp->matrix_optimizer == ETM_OPT_MUON, stacked = hp->muon_expert_layout == ETM_MUON_STACKED;
    double matrix = 0.0, other = 2.0 * V * D, nsf = 0.0; /* embedding and LM head: AdamW */
    for (int l = 0; l < hp->n_layer; l++) {
        matrix += 2.0 * HD * D + 2.0 * KVD * D;
        nsf += ns(hp, 1, HD, D) + 2 * ns(hp, 1, KVD, D) + ns(hp, 1, D, HD);
        if (etm_is_moe_layer(hp, l)) {
            out->moe_layers++;
            other += E * D; /* the router: AdamW */
            out->expert_params += 2.0 * E * Hx * D;
            matrix += 2.0 * (E + S) * Hx * D;
            /* per expert (rows, cols) matrices, or stacked (E rows, cols) ones */
            nsf += stacked ? ns(hp, 1, E * Hx, D) + ns(hp, 1, E * D, Hx) : ns(hp, E, Hx, D) + ns(hp, E, D, Hx);
            if (S > 0)
                nsf += stacked ? ns(hp, 1, S * Hx, D) + ns(hp, 1, S * D, Hx) : ns(hp, S, Hx, D) + ns(hp, S, D, Hx);
        } else {
            matrix += 2.0 * F * D;
            nsf += ns(hp, 1, F, D) + ns(hp, 1, D, F);
        }
    }
    out->ranks = N;
    out->accum_per_rank = A;
    out->tokens_per_step = (double)hp->grad_accum * hp->batch_size * hp->seq_len;
    out->params = matrix + other;
    out->muon_params = muon ? matrix : 0.0;
    out->adamw_params = muon ? other : matrix + other;
    out->flops_per_token = etm_hparams_train_flops_per_token(hp, hp->seq_len, hp->router == ETM_ROUTER_DENSE ? 0 : hp->top_k);
    out->step_flops = out->flops_per_token * out->tokens_per_step;
    out->optim_flops = muon ? nsf : 0.0;

    if (N > 1) {
        etm_comm_fold_bytes((size_t)out->params, A, N, 0, &out->reduce_sent, &out->reduce_received);
        out->muon_received = out->muon_sent = out->muon_params * sizeof(float) * (N - 1) / N;
        out->records_received = (double)A * out->moe_layers * (E + 1) * sizeof(double) * (N - 1);
    }
    out->sent = out->reduce_sent + out->muon_sent + out->records_received / (N > 1 ? N - 1 : 1);
    out->received = out->reduce_received + out->muon_received + out->records_received;
    double moved = ETM_MAX(out->sent, out->received);
    out->nvlink_s = moved / mc->nvlink_bps;
    out->network_s = moved / mc->network_bps;
    out->ep_possible = N > 1 && N <= hp->n_routed && out->moe_layers > 0;
    if (out->ep_possible) { /* expert parallelism: the same for the non-expert parameters, plus the tokens */
        double rs, rr, rest = out->params - out->expert_params;
        double muon_rest = muon ? matrix - out->expert_params : 0.0;
        etm_comm_fold_bytes((size_t)rest, A, N, 0, &rs, &rr);
        double mx = muon_rest * sizeof(float) * (N - 1) / N;
        out->ep_dense_bytes = ETM_MAX(rs, rr) + mx;
        double k = hp->router == ETM_ROUTER_DENSE ? 0.0 : hp->top_k;
        out->ep_alltoall_bytes = 4.0 * (out->tokens_per_step / N) * k * D * sizeof(float) *
                                 out->moe_layers * (N - 1) / N;
        double ep = out->ep_dense_bytes + out->ep_alltoall_bytes;
        out->ep_nvlink_s = ep / mc->nvlink_bps;
        out->ep_network_s = ep / mc->network_bps;
    }
    out->adamw_state = 2.0 * out->adamw_params * sizeof(float);
    out->muon_state = out->muon_params * sizeof(float);
    out->zero1_saved = (out->adamw_state + out->muon_state) * (N - 1) / N;
    out->zero1_bytes = ETM_MAX(out->reduce_sent, out->reduce_received);
    double rate = mc->mfu * mc->peak_flops;
    out->fwdbwd_s = out->step_flops / N / rate;
    out->optim_s = out->optim_flops / N / rate;
    out->compute_s = out->fwdbwd_s + out->optim_s;
    return 0;
}

void etm_comm_model_print(FILE *f, const char *name, const etm_comm_model *cm, const etm_comm_machine *mc) {
    const double G = 1e9;
    fprintf(f, "| %s on %d ranks | |\n|---|---|\n", name, cm->ranks);
    fprintf(f, "| tokens per step | %.0f (%d micro-batch%s per rank) |\n", cm->tokens_per_step,
            cm->accum_per_rank, cm->accum_per_rank == 1 ? "" : "es");
    fprintf(f, "| parameters: all, Muon, AdamW | %.0f, %.0f, %.0f |\n", cm->params, cm->muon_params,
            cm->adamw_params);
    fprintf(f, "| training FLOPs per step (forward + backward) | %.1f TFLOP |\n", cm->step_flops * 1e-12);
    fprintf(f, "| Newton-Schulz FLOPs per step | %.1f TFLOP |\n", cm->optim_flops * 1e-12);
    fprintf(f, "| gradient reduce per rank: sent, received | %.2f GB, %.2f GB |\n", cm->reduce_sent / G,
            cm->reduce_received / G);
    fprintf(f, "| Muon exchange (parameters) per rank: sent, received | %.2f GB, %.2f GB |\n", cm->muon_sent / G,
            cm->muon_received / G);
    fprintf(f, "| router records per rank: received | %.0f bytes |\n", cm->records_received);
    fprintf(f, "| per rank per step: sent, received | %.2f GB, %.2f GB |\n", cm->sent / G, cm->received / G);
    fprintf(f, "| communication over NVLink (%.0f GB/s per GPU and direction) | %.1f ms |\n",
            mc->nvlink_bps / G, cm->nvlink_s * 1e3);
    fprintf(f, "| communication over InfiniBand (%.0f GB/s per GPU and direction) | %.1f ms |\n",
            mc->network_bps / G, cm->network_s * 1e3);
    fprintf(f, "| compute per rank at %.0f%% MFU of %.0f TFLOP/s: forward + backward, Newton-Schulz | "
               "%.1f ms, %.1f ms |\n",
            100.0 * mc->mfu, mc->peak_flops * 1e-12, cm->fwdbwd_s * 1e3, cm->optim_s * 1e3);
    fprintf(f, "| communication / compute: NVLink, InfiniBand | %.2f, %.2f |\n",
            cm->compute_s > 0 ? cm->nvlink_s / cm->compute_s : 0.0,
            cm->compute_s > 0 ? cm->network_s / cm->compute_s : 0.0);
    fprintf(f, "| optimizer state per rank: AdamW m + v, Muon momentum | %.2f GB, %.2f GB |\n",
            cm->adamw_state / G, cm->muon_state / G);
    fprintf(f, "| ZeRO-1 by parameter owner (not built): state saved per rank, bytes per rank per step | "
               "%.2f GB, %.2f GB |\n", cm->zero1_saved / G, cm->zero1_bytes / G);
    fprintf(f, "| expert parallelism (not built): routed experts' parameters | %.0f |\n", cm->expert_params);
    if (!cm->ep_possible) {
        fprintf(f, "| expert parallelism over all ranks | n/a: needs 2 to n_routed ranks and MoE layers |\n");
        return;
    }
    fprintf(f, "| expert parallelism per rank: the rest's reduce + exchange, token all-to-all | %.2f GB, "
               "%.2f GB |\n", cm->ep_dense_bytes / G, cm->ep_alltoall_bytes / G);
    fprintf(f, "| expert parallelism: communication over NVLink, InfiniBand | %.1f ms, %.1f ms |\n",
            cm->ep_nvlink_s * 1e3, cm->ep_network_s * 1e3);
}
