/* bpe_train.c: the BPE trainer: counts unique pre-split pieces once, then learns merges with
 * incremental pair counts (only the words that contain the merged pair are revisited) and a
 * max-heap with lazy entries ordered by (count, byte order). */
#include <config.h>

#include "bpe_train.h"
#include "tokenizer_split.h"

#include <stdlib.h>
#include <string.h>

/* ---- shared helpers --------------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ n;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001B3ULL;
    return mix64(h);
}

#define GROW(ptr, cap, need)                                                     \
    do {                                                                         \
        if ((need) > (cap)) {                                                    \
            while ((need) > (cap)) (cap) = (cap) ? 2 * (cap) : 64;               \
            (ptr) = etm_realloc((ptr), (cap) * sizeof *(ptr));                   \
        }                                                                        \
    } while (0)

/* ---- counting pieces -------------------------------------------------------------------------- */

struct etm_bpe_trainer {
    etm_presplit *split;
    char *bytes;        /* (bytes_cap) every distinct piece's bytes back to back */
    size_t bytes_len, bytes_cap;
    size_t *word_off;   /* (words_cap) piece w is bytes[word_off[w], word_off[w] + word_len[w]) */
    uint32_t *word_len; /* (words_cap) */
    uint64_t *freq;     /* (words_cap) how often piece w occurs */
    size_t n_words, words_cap;
    int32_t *slot;      /* (slot_cap) piece index + 1, 0 empty */
    size_t slot_cap;
    size_t pieces;      /* all pieces counted */
};

etm_bpe_trainer *etm_bpe_trainer_create(etm_error *err) {
    etm_presplit *ps = etm_presplit_create(err);
    if (!ps) return NULL;
    etm_bpe_trainer *tr = etm_calloc(1, sizeof *tr);
    tr->split = ps;
    tr->slot_cap = 1 << 12;
    tr->slot = etm_calloc(tr->slot_cap, sizeof *tr->slot);
    return tr;
}

void etm_bpe_trainer_free(etm_bpe_trainer *tr) {
    if (!tr) return;
    etm_presplit_free(tr->split);
    free(tr->bytes);
    free(tr->word_off);
    free(tr->word_len);
    free(tr->freq);
    free(tr->slot);
    free(tr);
}

static size_t find_slot(const etm_bpe_trainer *tr, const int32_t *slot, size_t cap, const char *s, size_t n) {
    size_t mask = cap - 1, i = (size_t)hash_bytes(s, n) & mask;
    for (; slot[i]; i = (i + 1) & mask) {
        size_t w = (size_t)slot[i] - 1;
        if (tr->word_len[w] == n && !memcmp(tr->bytes + tr->word_off[w], s, n)) break;
    }
    return i;
}

static int count_piece(void *ctx, const char *piece, size_t len, int is_eot) {
    etm_bpe_trainer *tr = ctx;
    if (is_eot) return 0;
    tr->pieces++;
    if (len < 2) return 0; /* a single byte has no pair to learn */
    size_t i = find_slot(tr, tr->slot, tr->slot_cap, piece, len);
    if (tr->slot[i]) {
        tr->freq[tr->slot[i] - 1]++;
        return 0;
    }
    if (len > UINT32_MAX || tr->n_words >= INT32_MAX - 1) return 0; /* absurd sizes: not learnable, not fatal */
    size_t w = tr->n_words++;
    if (tr->n_words + 1 > tr->words_cap) {
        tr->words_cap = tr->words_cap ? 2 * tr->words_cap : 1024;
        tr->word_off = etm_realloc(tr->word_off, tr->words_cap * sizeof *tr->word_off);
        tr->word_len = etm_realloc(tr->word_len, tr->words_cap * sizeof *tr->word_len);
        tr->freq = etm_realloc(tr->freq, tr->words_cap * sizeof *tr->freq);
    }
    GROW(tr->bytes, tr->bytes_cap, tr->bytes_len + len);
    memcpy(tr->bytes + tr->bytes_len, piece, len);
    tr->word_off[w] = tr->bytes_len;
    tr->word_len[w] = (uint32_t)len;
    tr->freq[w] = 1;
    tr->bytes_len += len;
    tr->slot[i] = (int32_t)w + 1;
    if (2 * tr->n_words > tr->slot_cap) { /* keep the load under one half */
        size_t cap = tr->slot_cap * 2;
        int32_t *slot = etm_calloc(cap, sizeof *slot);
        for (size_t v = 0; v < tr->n_words; v++)
            slot[find_slot(tr, slot, cap, tr->bytes + tr->word_off[v], tr->word_len[v])] = (int32_t)v + 1;
        free(tr->slot);
        tr->slot = slot;
        tr->slot_cap = cap;
    }
    return 0;
}

void etm_bpe_trainer_add(etm_bpe_trainer *tr, const char *text, size_t len) {
    etm_presplit_run(tr->split, text, len, count_piece, tr);
}

/* ---- training state --------------------------------------------------------------------------- */

typedef struct {
    int32_t *w;  /* (cap) words that contained the pair when it appeared in them (may be stale) */
    uint32_t n, cap;
} word_list;

typedef struct {
    uint64_t count; /* current occurrences weighted by word frequency */
    int32_t pair;
} heap_entry;

typedef struct {
    /* tokens */
    char *tb;           /* (tb_cap) token bytes back to back */
    size_t *toff;       /* (n_tok + 1) token t is tb[toff[t], toff[t+1]) */
    size_t tb_len, tb_cap, n_tok, toff_cap;
    int32_t *tslot;     /* (tslot_cap) token id + 1 by bytes, to refuse duplicate tokens */
    size_t tslot_cap;
    /* words: symbols of every distinct piece, shrinking in place as merges apply */
    int32_t *sym;       /* all words' symbols */
    size_t *woff;       /* (n_words) start of word w in sym */
    uint32_t *wlen;     /* (n_words) current number of symbols */
    const uint64_t *freq;
    /* pairs */
    int32_t *pa, *pb;   /* (n_pairs) left and right token */
    uint64_t *count;    /* (n_pairs) */
    uint64_t *pushed;   /* (n_pairs) count of the newest heap entry (>= count; 0: none), older ones are ignored */
    uint8_t *banned;    /* (n_pairs) merged bytes already a token: never merged */
    uint32_t *stamp;    /* (n_pairs) last merge step that touched the pair */
    word_list *words;   /* (n_pairs) */
    size_t n_pairs, pairs_cap;
    uint64_t *pkey;     /* (pslot_cap) (left << 32 | right) + 1, 0 empty */
    int32_t *pidx;      /* (pslot_cap) pair index */
    size_t pslot_cap;
    heap_entry *heap;   /* (heap_cap) */
    size_t n_heap, heap_cap;
    int32_t *touched;   /* (touched_cap) pairs whose count rose in this step */
    size_t n_touched, touched_cap;
} state;

/* -1, 0, 1 as token a's bytes sort before, equal to, after b's (a prefix sorts first). */
static int cmp_tok(const state *s, int32_t a, int32_t b) {
    if (a == b) return 0;
    size_t la = s->toff[a + 1] - s->toff[a], lb = s->toff[b + 1] - s->toff[b];
    int c = memcmp(s->tb + s->toff[a], s->tb + s->toff[b], ETM_MIN(la, lb));
    if (c) return c < 0 ? -1 : 1;
    return la < lb ? -1 : la > lb ? 1 : 0;
}

/* Whether entry x should be merged before y: higher count, then lower pair in byte order. */
static int before(const state *s, heap_entry x, heap_entry y) {
    if (x.count != y.count) return x.count > y.count;
    int c = cmp_tok(s, s->pa[x.pair], s->pa[y.pair]);
    if (c) return c < 0;
    return cmp_tok(s, s->pb[x.pair], s->pb[y.pair]) < 0;
}

static void heap_push(state *s, int32_t p) {
    GROW(s->heap, s->heap_cap, s->n_heap + 1);
    heap_entry v = {s->count[p], p};
    s->pushed[p] = v.count;
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(s, v, s->heap[parent])) break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = v;
}

static heap_entry heap_pop(state *s) {
    heap_entry top = s->heap[0], v = s->heap[--s->n_heap];
    size_t i = 0, n = s->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && before(s, s->heap[c + 1], s->heap[c])) c++;
        if (!before(s, s->heap[c], v)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = v;
    return top;
}

static size_t tok_slot(const state *s, const int32_t *slot, size_t cap, const char *b, size_t n) {
    size_t mask = cap - 1, i = (size_t)hash_bytes(b, n) & mask;
    for (; slot[i]; i = (i + 1) & mask) {
        int32_t t = slot[i] - 1;
        if (s->toff[t + 1] - s->toff[t] == n && !memcmp(s->tb + s->toff[t], b, n)) break;
    }
    return i;
}

static void add_token(state *s, const char *b, size_t n) {
    GROW(s->tb, s->tb_cap, s->tb_len + n);
    GROW(s->toff, s->toff_cap, s->n_tok + 2);
    memcpy(s->tb + s->tb_len, b, n);
    s->toff[s->n_tok] = s->tb_len;
    s->tb_len += n;
    s->toff[s->n_tok + 1] = s->tb_len;
    int32_t t = (int32_t)s->n_tok++;
    if (2 * s->n_tok > s->tslot_cap) {
        size_t cap = s->tslot_cap ? 2 * s->tslot_cap : 1024;
        int32_t *slot = etm_calloc(cap, sizeof *slot);
        for (size_t u = 0; u + 1 < s->n_tok; u++)
            slot[tok_slot(s, slot, cap, s->tb + s->toff[u], s->toff[u + 1] - s->toff[u])] = (int32_t)u + 1;
        free(s->tslot);
        s->tslot = slot;
        s->tslot_cap = cap;
    }
    s->tslot[tok_slot(s, s->tslot, s->tslot_cap, b, n)] = t + 1;
}

static int token_exists(const state *s, const char *b, size_t n) {
    return s->tslot[tok_slot(s, s->tslot, s->tslot_cap, b, n)] != 0;
}

static int32_t pair_index(state *s, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
    if (2 * (s->n_pairs + 1) > s->pslot_cap) {
        size_t cap = s->pslot_cap ? 2 * s->pslot_cap : 1 << 12;
        uint64_t *pkey = etm_calloc(cap, sizeof *pkey);
        int32_t *pidx = etm_malloc(cap * sizeof *pidx);
        for (size_t j = 0; j < s->pslot_cap; j++) {
            if (!s->pkey[j]) continue;
            size_t k = (size_t)mix64(s->pkey[j]) & (cap - 1);
            while (pkey[k]) k = (k + 1) & (cap - 1);
            pkey[k] = s->pkey[j];
            pidx[k] = s->pidx[j];
        }
        free(s->pkey);
        free(s->pidx);
        s->pkey = pkey;
        s->pidx = pidx;
        s->pslot_cap = cap;
    }
    size_t mask = s->pslot_cap - 1, i = (size_t)mix64(key) & mask;
    for (; s->pkey[i]; i = (i + 1) & mask)
        if (s->pkey[i] == key) return s->pidx[i];
    size_t p = s->n_pairs++;
    if (s->n_pairs > s->pairs_cap) {
        s->pairs_cap = s->pairs_cap ? 2 * s->pairs_cap : 1 << 12;
        s->pa = etm_realloc(s->pa, s->pairs_cap * sizeof *s->pa);
        s->pb = etm_realloc(s->pb, s->pairs_cap * sizeof *s->pb);
        s->count = etm_realloc(s->count, s->pairs_cap * sizeof *s->count);
        s->pushed = etm_realloc(s->pushed, s->pairs_cap * sizeof *s->pushed);
        s->banned = etm_realloc(s->banned, s->pairs_cap * sizeof *s->banned);
        s->stamp = etm_realloc(s->stamp, s->pairs_cap * sizeof *s->stamp);
        s->words = etm_realloc(s->words, s->pairs_cap * sizeof *s->words);
    }
    s->pa[p] = a;
    s->pb[p] = b;
    s->count[p] = s->pushed[p] = 0;
    s->banned[p] = 0;
    s->stamp[p] = 0;
    memset(&s->words[p], 0, sizeof s->words[p]);
    s->pkey[i] = key;
    s->pidx[i] = (int32_t)p;
    return (int32_t)p;
}

static void note_word(word_list *l, int32_t w) {
    if (l->n && l->w[l->n - 1] == w) return; /* consecutive repeats come from one word */
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 4;
        l->w = etm_realloc(l->w, l->cap * sizeof *l->w);
    }
    l->w[l->n++] = w;
}

static void free_state(state *s) {
    free(s->tb);
    free(s->toff);
    free(s->tslot);
    free(s->sym);
    free(s->woff);
    free(s->wlen);
    for (size_t p = 0; p < s->n_pairs; p++) free(s->words[p].w);
    free(s->pa);
    free(s->pb);
    free(s->count);
    free(s->pushed);
    free(s->banned);
    free(s->stamp);
    free(s->words);
    free(s->pkey);
    free(s->pidx);
    free(s->heap);
    free(s->touched);
}

static void add_count(state *s, int32_t l, int32_t r, uint64_t f, int32_t w, uint32_t step) {
    int32_t p = pair_index(s, l, r);
    s->count[p] += f;
    note_word(&s->words[p], w);
    if (s->stamp[p] != step) {
        s->stamp[p] = step;
        GROW(s->touched, s->touched_cap, s->n_touched + 1);
        s->touched[s->n_touched++] = p;
    }
}

/* Applies merge (a, b) -> c to word w and updates the counts of the pairs around each merged
 * occurrence only, so a long word costs a scan, not a recount; returns whether it occurred.
 * Old pairs: each occurrence at i loses (a, b), (b, x[i+2]), and (x[i-1], a) unless the previous
 * occurrence ended at i (then that pair was its right one). New pairs: each c gains its left
 * pair, and its right pair unless the right symbol is another c (whose left pair it is). */
static int merge_word(state *s, int32_t w, int32_t a, int32_t b, int32_t c, uint32_t step) {
    int32_t *x = s->sym + s->woff[w];
    uint32_t n = s->wlen[w], i, o = 0, prev_end = UINT32_MAX;
    uint64_t f = s->freq[w];
    int found = 0;
    for (i = 0; i < n; i++) {
        if (i + 1 < n && x[i] == a && x[i + 1] == b) {
            found = 1;
            if (i > 0 && i != prev_end) s->count[pair_index(s, x[i - 1], a)] -= f;
            s->count[pair_index(s, a, b)] -= f;
            if (i + 2 < n) s->count[pair_index(s, b, x[i + 2])] -= f;
            prev_end = i + 2;
            x[o++] = c;
            i++;
        } else
            x[o++] = x[i];
    }
    if (!found) return 0; /* a stale list entry: the word no longer has the pair */
    s->wlen[w] = o;
    for (i = 0; i < o; i++) {
        if (x[i] != c) continue; /* c is new: every c in the word came from this merge */
        if (i > 0) add_count(s, x[i - 1], c, f, w, step);
        if (i + 1 < o && x[i + 1] != c) add_count(s, c, x[i + 1], f, w, step);
    }
    return 1;
}

int etm_bpe_trainer_train(etm_bpe_trainer *tr, int vocab_size, etm_merges *out, etm_bpe_stats *stats,
                          etm_error *err) {
    memset(out, 0, sizeof *out);
    if (vocab_size < 257)
        return etm_fail(err, "vocabulary size %d is too small: it counts 256 bytes and <|endoftext|>, so at least 257",
                        vocab_size);
    size_t target = (size_t)vocab_size - 257;
    state s;
    memset(&s, 0, sizeof s);
    etm_byte_alphabet alpha;
    etm_byte_alphabet_init(&alpha);
    for (int id = 0; id < 256; id++) add_token(&s, (const char *)&alpha.id_to_byte[id], 1);

    /* Words start as their bytes' one-byte tokens. */
    s.freq = tr->freq;
    s.sym = etm_malloc((tr->bytes_len + 1) * sizeof *s.sym);
    s.woff = etm_malloc((tr->n_words + 1) * sizeof *s.woff);
    s.wlen = etm_malloc((tr->n_words + 1) * sizeof *s.wlen);
    for (size_t w = 0; w < tr->n_words; w++) {
        s.woff[w] = tr->word_off[w];
        s.wlen[w] = tr->word_len[w];
        const unsigned char *b = (const unsigned char *)tr->bytes + tr->word_off[w];
        for (uint32_t i = 0; i < s.wlen[w]; i++) s.sym[s.woff[w] + i] = alpha.byte_to_id[b[i]];
        for (uint32_t i = 0; i + 1 < s.wlen[w]; i++) {
            int32_t p = pair_index(&s, s.sym[s.woff[w] + i], s.sym[s.woff[w] + i + 1]);
            s.count[p] += tr->freq[w];
            note_word(&s.words[p], (int32_t)w);
        }
    }
    for (size_t p = 0; p < s.n_pairs; p++) heap_push(&s, (int32_t)p);

    size_t cap = 64, skipped = 0;
    out->off = etm_malloc((2 * cap + 1) * sizeof *out->off);
    out->off[0] = 0;
    size_t out_bytes = 0, out_cap = 0;
    uint32_t step = 0;
    while (out->n < target && s.n_heap) {
        heap_entry e = heap_pop(&s);
        int32_t p = e.pair;
        if (e.count != s.pushed[p] || s.banned[p]) continue; /* superseded by a newer entry */
        if (s.count[p] != e.count) { /* count fell since: requeue, or forget a pair that is gone */
            if (s.count[p] > 0) heap_push(&s, p);
            else s.pushed[p] = 0;
            continue;
        }
        int32_t a = s.pa[p], b = s.pb[p];
        size_t la = s.toff[a + 1] - s.toff[a], lb = s.toff[b + 1] - s.toff[b];
        GROW(out->bytes, out_cap, out_bytes + la + lb);
        memcpy(out->bytes + out_bytes, s.tb + s.toff[a], la);
        memcpy(out->bytes + out_bytes + la, s.tb + s.toff[b], lb);
        if (token_exists(&s, out->bytes + out_bytes, la + lb)) {
            s.banned[p] = 1;
            skipped++;
            continue;
        }
        int32_t c = (int32_t)s.n_tok;
        add_token(&s, out->bytes + out_bytes, la + lb);
        if (out->n == cap) out->off = etm_realloc(out->off, (2 * (cap *= 2) + 1) * sizeof *out->off);
        out->off[2 * out->n + 1] = out_bytes + la;
        out->off[2 * out->n + 2] = out_bytes + la + lb;
        out->n++;
        out_bytes += la + lb;

        step++;
        s.n_touched = 0;
        word_list list = s.words[p]; /* new pairs all contain c, so this list does not grow */
        for (uint32_t k = 0; k < list.n; k++) merge_word(&s, list.w[k], a, b, c, step);
        free(list.w);
        memset(&s.words[p], 0, sizeof s.words[p]);
        s.pushed[p] = 0; /* merged everywhere: its count is now 0 and it can never come back */
        for (size_t k = 0; k < s.n_touched; k++) {
            int32_t q = s.touched[k];
            if (!s.banned[q] && s.count[q] > s.pushed[q]) heap_push(&s, q);
        }
    }
    if (stats) {
        stats->pieces = tr->pieces;
        stats->unique_pieces = tr->n_words;
        stats->merges = out->n;
        stats->skipped = skipped;
    }
    if (!out->bytes) out->bytes = etm_malloc(1);
    free_state(&s);
    return 0;
}
