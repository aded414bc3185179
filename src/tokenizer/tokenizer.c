/* tokenizer.c: the byte-level BPE tokenizer: vocabulary tables built from a merges file, pair
 * ranks in a hash map, BPE merging of each pre-split piece (lowest-ranked pair first, leftmost
 * on ties, as GPT-2's encoder does), a per-call cache of piece -> ids, and decoding. */
#include <config.h>

#include "tokenizer.h"
#include "tokenizer_merges.h"
#include "tokenizer_split.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct etm_tokenizer {
    int32_t n_merges;
    int32_t byte_to_id[256];  /* the one-byte tokens */
    size_t *tok_off;          /* (vocab + 1) token id's bytes are tok_bytes[tok_off[id], tok_off[id+1]) */
    char *tok_bytes;          /* every token's bytes back to back, EOT's literal last */
    uint64_t *pair_key;       /* (pair_cap) open addressing: left << 32 | right, 0 empty (stored + 1) */
    int32_t *pair_rank;       /* (pair_cap) merge index of the pair */
    size_t pair_cap;          /* power of two */
    etm_presplit *split;      /* the pre-tokenizer */
};

/* ---- hashing ---------------------------------------------------------------------------------- */

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
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = mix64(h ^ w);
    }
    uint64_t w = 0;
    memcpy(&w, s + i, n - i);
    return mix64(h ^ w ^ ((uint64_t)(n - i) << 59));
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

static inline uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1; }

/* Rank of the merge (a, b), or -1 when the pair is not a merge. */
static inline int32_t pair_rank(const etm_tokenizer *tok, int32_t a, int32_t b) {
    uint64_t key = pair_key(a, b);
    size_t mask = tok->pair_cap - 1, i = (size_t)mix64(key) & mask;
    for (;;) {
        uint64_t k = tok->pair_key[i];
        if (k == key) return tok->pair_rank[i];
        if (k == 0) return -1;
        i = (i + 1) & mask;
    }
}

/* ---- loading ---------------------------------------------------------------------------------- */

/* A map from token bytes to id, used while resolving merge lines. */
typedef struct {
    int32_t *slot; /* (cap) token id + 1, 0 empty */
    size_t cap;
} bytes_map;

static int32_t bytes_map_find(const bytes_map *m, const etm_tokenizer *tok, const char *s, size_t n, size_t *where) {
    size_t mask = m->cap - 1, i = (size_t)hash_bytes(s, n) & mask;
    for (;; i = (i + 1) & mask) {
        int32_t id = m->slot[i] - 1;
        if (id < 0) break;
        size_t len = tok->tok_off[id + 1] - tok->tok_off[id];
        if (len == n && !memcmp(tok->tok_bytes + tok->tok_off[id], s, n)) break;
    }
    *where = i;
    return m->slot[i] - 1;
}

static etm_tokenizer *build(const etm_merges *m, const char *origin, etm_error *err) {
    if (m->n > (size_t)INT32_MAX - 257) {
        etm_fail(err, "%s: too many merges (%zu)", origin, m->n);
        return NULL;
    }
    etm_tokenizer *tok = etm_calloc(1, sizeof *tok);
    etm_byte_alphabet a;
    etm_byte_alphabet_init(&a);
    memcpy(tok->byte_to_id, a.byte_to_id, sizeof tok->byte_to_id);
    tok->n_merges = (int32_t)m->n;
    size_t vocab = 257 + m->n, merged_bytes = m->n ? m->off[2 * m->n] : 0;
    tok->tok_off = etm_malloc((vocab + 1) * sizeof *tok->tok_off);
    tok->tok_bytes = etm_malloc(256 + merged_bytes + sizeof ETM_EOT_TEXT);
    for (int id = 0; id < 256; id++) {
        tok->tok_off[id] = (size_t)id;
        tok->tok_bytes[id] = (char)a.id_to_byte[id];
    }
    tok->tok_off[256] = 256;
    tok->pair_cap = pow2_at_least(2 * m->n + 2);
    tok->pair_key = etm_calloc(tok->pair_cap, sizeof *tok->pair_key);
    tok->pair_rank = etm_malloc(tok->pair_cap * sizeof *tok->pair_rank);

    bytes_map bm = {etm_calloc(pow2_at_least(2 * vocab), sizeof(int32_t)), pow2_at_least(2 * vocab)};
    size_t where;
    for (int32_t id = 0; id < 256; id++) {
        bytes_map_find(&bm, tok, tok->tok_bytes + id, 1, &where);
        bm.slot[where] = id + 1;
    }
    for (size_t r = 0; r < m->n; r++) {
        const char *l = m->bytes + m->off[2 * r], *rt = m->bytes + m->off[2 * r + 1];
        size_t ll = m->off[2 * r + 1] - m->off[2 * r], rl = m->off[2 * r + 2] - m->off[2 * r + 1];
        int32_t li = bytes_map_find(&bm, tok, l, ll, &where), ri = bytes_map_find(&bm, tok, rt, rl, &where);
        if (li < 0 || ri < 0) {
            etm_fail(err, "%s:%zu: merge uses the token '%.*s' that no earlier line made (corrupt merges file?)",
                     origin, r + 2, (int)(li < 0 ? ll : rl), li < 0 ? l : rt);
            goto fail;
        }
        int32_t id = 256 + (int32_t)r;
        size_t o = tok->tok_off[id];
        memcpy(tok->tok_bytes + o, l, ll);
        memcpy(tok->tok_bytes + o + ll, rt, rl);
        tok->tok_off[id + 1] = o + ll + rl;
        int32_t dup = bytes_map_find(&bm, tok, tok->tok_bytes + o, ll + rl, &where);
        if (dup >= 0) {
            etm_fail(err, "%s:%zu: merge makes a token that id %d already is (corrupt merges file?)", origin, r + 2, dup);
            goto fail;
        }
        bm.slot[where] = id + 1;
        uint64_t key = pair_key(li, ri);
        size_t mask = tok->pair_cap - 1, i = (size_t)mix64(key) & mask;
        while (tok->pair_key[i] != 0 && tok->pair_key[i] != key) i = (i + 1) & mask;
        if (tok->pair_key[i] == key) {
            etm_fail(err, "%s:%zu: the same merge appears twice (corrupt merges file?)", origin, r + 2);
            goto fail;
        }
        tok->pair_key[i] = key;
        tok->pair_rank[i] = (int32_t)r;
    }
    size_t o = tok->tok_off[256 + m->n];
    memcpy(tok->tok_bytes + o, ETM_EOT_TEXT, sizeof ETM_EOT_TEXT - 1);
    tok->tok_off[vocab] = o + sizeof ETM_EOT_TEXT - 1;
    free(bm.slot);
    if (!(tok->split = etm_presplit_create(err))) {
        etm_tokenizer_free(tok);
        return NULL;
    }
    return tok;
fail:
    free(bm.slot);
    etm_tokenizer_free(tok);
    return NULL;
}

etm_tokenizer *etm_tokenizer_from_merges(const char *text, size_t len, const char *origin, etm_error *err) {
    etm_merges m;
    if (etm_merges_parse(text, len, origin, &m, err) != 0) return NULL;
    etm_tokenizer *tok = build(&m, origin, err);
    etm_merges_free(&m);
    return tok;
}

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* A shipped name is a bare word: letters, digits, '-', '_'. */
static int is_name(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '-' || *s == '_'))
            return 0;
    return 1;
}

int etm_tokenizer_path(const char *path_or_name, char *buf, size_t len, etm_error *err) {
    if (!is_name(path_or_name) || file_exists(path_or_name)) {
        if (snprintf(buf, len, "%s", path_or_name) >= (int)len) return etm_fail(err, "%s: path too long", path_or_name);
        return 0;
    }
    char dir[4096];
    etm_data_dir(dir, sizeof dir);
    int n = !strcmp(path_or_name, "gpt2") ? snprintf(buf, len, "%s/gpt2/vocab.bpe", dir)
                                          : snprintf(buf, len, "%s/tokenizers/%s.bpe", dir, path_or_name);
    if (n < 0 || (size_t)n >= len) return etm_fail(err, "%s: data path too long", path_or_name);
    if (!file_exists(buf))
        return etm_fail(err, "tokenizer '%s': no such file, and no shipped tokenizer of that name (looked for %s)",
                        path_or_name, buf);
    return 0;
}

etm_tokenizer *etm_tokenizer_load(const char *path_or_name, etm_error *err) {
    char path[4096];
    if (etm_tokenizer_path(path_or_name, path, sizeof path, err) != 0) return NULL;
    size_t len;
    char *text = etm_read_file(path, &len, err);
    if (!text) return NULL;
    etm_tokenizer *tok = etm_tokenizer_from_merges(text, len, path, err);
    free(text);
    return tok;
}

void etm_tokenizer_free(etm_tokenizer *tok) {
    if (!tok) return;
    etm_presplit_free(tok->split);
    free(tok->tok_off);
    free(tok->tok_bytes);
    free(tok->pair_key);
    free(tok->pair_rank);
    free(tok);
}

int etm_tokenizer_vocab_size(const etm_tokenizer *tok) { return tok->n_merges + 257; }

int32_t etm_tokenizer_eot(const etm_tokenizer *tok) { return tok->n_merges + 256; }

const char *etm_tokenizer_token_bytes(const etm_tokenizer *tok, int32_t id, size_t *len) {
    if (id < 0 || id > tok->n_merges + 256) return NULL;
    if (len) *len = tok->tok_off[id + 1] - tok->tok_off[id];
    return tok->tok_bytes + tok->tok_off[id];
}

/* ---- BPE merging of one piece ----------------------------------------------------------------- */

/* The piece's symbols as a linked list (merging keeps the left node), and a min-heap of
 * candidate merges ordered by (rank, position); entries go stale and are checked when popped. */
typedef struct {
    int32_t *tok;         /* (cap) symbol at each original byte position */
    int32_t *next, *prev; /* (cap) neighbours, -1 at the ends */
    uint64_t *heap;       /* (cap) rank << 32 | left position */
    size_t cap, n_heap;   /* cap >= 2 * piece length */
} bpe_scratch;

/* Room for a piece of n bytes: the heap holds at most 2n entries (n - 1 at first, and each merge
 * pops one and pushes at most two). */
static void scratch_reserve(bpe_scratch *s, size_t n) {
    if (2 * n <= s->cap) return;
    s->cap = 4 * n;
    s->tok = etm_realloc(s->tok, s->cap * sizeof *s->tok);
    s->next = etm_realloc(s->next, s->cap * sizeof *s->next);
    s->prev = etm_realloc(s->prev, s->cap * sizeof *s->prev);
    s->heap = etm_realloc(s->heap, s->cap * sizeof *s->heap);
}

static void scratch_free(bpe_scratch *s) {
    free(s->tok);
    free(s->next);
    free(s->prev);
    free(s->heap);
}

static void heap_push(bpe_scratch *s, uint64_t v) {
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (s->heap[p] <= v) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = v;
}

static uint64_t heap_pop(bpe_scratch *s) {
    uint64_t top = s->heap[0], v = s->heap[--s->n_heap];
    size_t i = 0, n = s->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && s->heap[c + 1] < s->heap[c]) c++;
        if (s->heap[c] >= v) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = v;
    return top;
}

static void push_pair(const etm_tokenizer *tok, bpe_scratch *s, int32_t left) {
    int32_t right = s->next[left];
    if (right < 0) return;
    int32_t r = pair_rank(tok, s->tok[left], s->tok[right]);
    if (r >= 0) heap_push(s, (uint64_t)r << 32 | (uint32_t)left);
}

/* Appends the ids of one piece to out[*n_out...]; out has room for len ids. */
static size_t bpe_piece(const etm_tokenizer *tok, bpe_scratch *s, const char *piece, size_t len, int32_t *out) {
    scratch_reserve(s, len);
    for (size_t i = 0; i < len; i++) {
        s->tok[i] = tok->byte_to_id[(unsigned char)piece[i]];
        s->prev[i] = (int32_t)i - 1;
        s->next[i] = i + 1 < len ? (int32_t)i + 1 : -1;
    }
    s->n_heap = 0;
    for (size_t i = 0; i + 1 < len; i++) push_pair(tok, s, (int32_t)i);
    while (s->n_heap) {
        uint64_t top = heap_pop(s);
        int32_t rank = (int32_t)(top >> 32), left = (int32_t)(uint32_t)top;
        int32_t right = s->next[left];
        /* A stale entry: its left node was merged away or its pair changed. Merged-away nodes
         * are marked by prev == -2; a rank identifies its pair, so an equal rank is current. */
        if (s->prev[left] == -2 || right < 0 || pair_rank(tok, s->tok[left], s->tok[right]) != rank) continue;
        s->tok[left] = 256 + rank;
        s->next[left] = s->next[right];
        if (s->next[right] >= 0) s->prev[s->next[right]] = left;
        s->prev[right] = -2;
        if (s->prev[left] >= 0) push_pair(tok, s, s->prev[left]);
        push_pair(tok, s, left);
    }
    size_t n = 0;
    for (int32_t i = 0; i >= 0; i = s->next[i]) out[n++] = s->tok[i];
    return n;
}

/* ---- encoding --------------------------------------------------------------------------------- */

/* Cache of piece bytes -> ids for one encode call: most pieces of prose repeat. */
#define CACHE_MAX_PIECE 64
#define CACHE_MAX_ENTRIES (1u << 18) /* 2^19 slots of 32 bytes at most */

typedef struct {
    uint64_t hash;   /* of the piece's bytes; 0 marks an empty slot */
    size_t key_off;  /* piece bytes in keys */
    size_t ids_off;  /* ids in ids */
    uint32_t key_len, n_ids;
} cache_slot;

typedef struct {
    const etm_tokenizer *tok;
    int32_t *out;     /* (cap) ids so far */
    size_t n, cap;
    bpe_scratch scratch;
    cache_slot *slots; /* (slot_cap) */
    size_t slot_cap, n_entries;
    char *keys;        /* (key_cap) */
    size_t key_len, key_cap;
    int32_t *ids;      /* (ids_cap) */
    size_t ids_len, ids_cap;
} encoder;

static void out_reserve(encoder *e, size_t more) {
    if (e->n + more <= e->cap) return;
    while (e->n + more > e->cap) e->cap = e->cap ? e->cap * 2 : 1024;
    e->out = etm_realloc(e->out, e->cap * sizeof *e->out);
}

static void cache_clear(encoder *e) {
    memset(e->slots, 0, e->slot_cap * sizeof *e->slots);
    e->n_entries = e->key_len = e->ids_len = 0;
}

static int encode_piece(void *ctx, const char *piece, size_t len, int is_eot) {
    encoder *e = ctx;
    out_reserve(e, len);
    if (is_eot) {
        e->out[e->n++] = etm_tokenizer_eot(e->tok);
        return 0;
    }
    if (len == 1) {
        e->out[e->n++] = e->tok->byte_to_id[(unsigned char)piece[0]];
        return 0;
    }
    if (len > CACHE_MAX_PIECE) {
        e->n += bpe_piece(e->tok, &e->scratch, piece, len, e->out + e->n);
        return 0;
    }
    if (!e->slots) {
        e->slot_cap = 1 << 12;
        e->slots = etm_calloc(e->slot_cap, sizeof *e->slots);
    }
    uint64_t h = hash_bytes(piece, len) | 1;
    size_t mask = e->slot_cap - 1, i = (size_t)h & mask;
    for (; e->slots[i].hash; i = (i + 1) & mask) {
        const cache_slot *c = &e->slots[i];
        if (c->hash == h && c->key_len == len && !memcmp(e->keys + c->key_off, piece, len)) {
            memcpy(e->out + e->n, e->ids + c->ids_off, c->n_ids * sizeof *e->ids);
            e->n += c->n_ids;
            return 0;
        }
    }
    size_t n = bpe_piece(e->tok, &e->scratch, piece, len, e->out + e->n);
    if (e->n_entries >= CACHE_MAX_ENTRIES) {
        cache_clear(e); /* bounded memory on huge, diverse inputs */
        i = (size_t)h & mask;
    } else if (2 * (e->n_entries + 1) > e->slot_cap) { /* grow, keeping the load under one half */
        size_t cap = e->slot_cap * 2;
        cache_slot *slots = etm_calloc(cap, sizeof *slots);
        for (size_t j = 0; j < e->slot_cap; j++) {
            if (!e->slots[j].hash) continue;
            size_t k = (size_t)e->slots[j].hash & (cap - 1);
            while (slots[k].hash) k = (k + 1) & (cap - 1);
            slots[k] = e->slots[j];
        }
        free(e->slots);
        e->slots = slots;
        e->slot_cap = cap;
        mask = cap - 1;
        for (i = (size_t)h & mask; e->slots[i].hash; i = (i + 1) & mask) {}
    }
    if (e->key_len + len > e->key_cap) {
        while (e->key_len + len > e->key_cap) e->key_cap = e->key_cap ? e->key_cap * 2 : 1 << 16;
        e->keys = etm_realloc(e->keys, e->key_cap);
    }
    if (e->ids_len + n > e->ids_cap) {
        while (e->ids_len + n > e->ids_cap) e->ids_cap = e->ids_cap ? e->ids_cap * 2 : 1 << 14;
        e->ids = etm_realloc(e->ids, e->ids_cap * sizeof *e->ids);
    }
    memcpy(e->keys + e->key_len, piece, len);
    memcpy(e->ids + e->ids_len, e->out + e->n, n * sizeof *e->ids);
    e->slots[i] = (cache_slot){h, e->key_len, e->ids_len, (uint32_t)len, (uint32_t)n};
    e->key_len += len;
    e->ids_len += n;
    e->n_entries++;
    e->n += n;
    return 0;
}

int32_t *etm_tokenizer_encode(const etm_tokenizer *tok, const char *text, size_t len, size_t *n_out) {
    encoder e;
    memset(&e, 0, sizeof e);
    e.tok = tok;
    out_reserve(&e, len / 3 + 16);
    etm_presplit_run(tok->split, text, len, encode_piece, &e);
    scratch_free(&e.scratch);
    free(e.slots);
    free(e.keys);
    free(e.ids);
    *n_out = e.n;
    return e.out;
}

char *etm_tokenizer_decode(const etm_tokenizer *tok, const int32_t *ids, size_t n, size_t *len_out, etm_error *err) {
    size_t total = 0;
    int32_t vocab = tok->n_merges + 257;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= vocab) {
            etm_fail(err, "token id %ld at position %zu is outside the vocabulary (0..%d)", (long)ids[i], i, vocab - 1);
            return NULL;
        }
        total += tok->tok_off[ids[i] + 1] - tok->tok_off[ids[i]];
    }
    char *buf = etm_malloc(total + 1), *p = buf;
    for (size_t i = 0; i < n; i++) {
        size_t l = tok->tok_off[ids[i] + 1] - tok->tok_off[ids[i]];
        memcpy(p, tok->tok_bytes + tok->tok_off[ids[i]], l);
        p += l;
    }
    *p = '\0';
    if (len_out) *len_out = total;
    return buf;
}

int32_t *etm_tokenizer_byte_lengths(const etm_tokenizer *tok, int vocab_size, etm_error *err) {
    int32_t *len = etm_calloc((size_t)vocab_size, sizeof *len);
    int n = ETM_MIN(vocab_size, etm_tokenizer_vocab_size(tok));
    for (int32_t id = 0; id < n; id++) {
        if (id == etm_tokenizer_eot(tok)) continue;
        size_t bytes;
        char *text = etm_tokenizer_decode(tok, &id, 1, &bytes, err);
        if (!text) {
            free(len);
            return NULL;
        }
        free(text);
        len[id] = (int32_t)bytes;
    }
    return len;
}
