/* safetensors.h: reading and writing tensors in the safetensors format (Hugging Face's), the
 * format of etmoe's checkpoints (doc/checkpoint-format.md).
 *
 * A file is: an 8-byte little-endian unsigned header length N; N bytes of UTF-8 JSON, an object
 * mapping each tensor's name to {"dtype", "shape", "data_offsets": [begin, end]} plus an optional
 * "__metadata__" object of string values; then the data section, every tensor's bytes
 * (little-endian, row-major) at [begin, end) relative to the section's start.
 *
 * The writer is deterministic: metadata first with its keys sorted, then tensors sorted by name
 * (strcmp), each entry's keys in the order dtype, shape, data_offsets, compact JSON, the header
 * padded with spaces to a multiple of 8 bytes, the data in the same order with no gaps. The same
 * tensors and metadata give the same bytes. Files are written atomically.
 *
 * The reader validates the whole header on open (lengths, JSON, dtypes, shapes against offsets,
 * offsets in bounds, tensors neither overlapping nor leaving gaps) and reads tensors on demand,
 * checking dtype and shape against what the caller expects. Every error names the file and the
 * tensor. */
#ifndef ETM_SAFETENSORS_H
#define ETM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

/* The dtypes of the safetensors specification. etmoe writes F32, I64, I32 and U8; the reader
 * validates files holding any of these. */
typedef enum {
    ETM_ST_BOOL = 0,
    ETM_ST_U8,
    ETM_ST_I8,
    ETM_ST_F8_E5M2,
    ETM_ST_F8_E4M3,
    ETM_ST_I16,
    ETM_ST_U16,
    ETM_ST_F16,
    ETM_ST_BF16,
    ETM_ST_I32,
    ETM_ST_U32,
    ETM_ST_F32,
    ETM_ST_I64,
    ETM_ST_U64,
    ETM_ST_F64,
    ETM_ST_N_DTYPES
} etm_st_dtype;

#define ETM_ST_MAX_DIMS 8
/* The largest header the reader accepts (the reference implementation's limit). */
#define ETM_ST_MAX_HEADER ((uint64_t)100000000)

const char *etm_st_dtype_name(etm_st_dtype dtype); /* "F32" */
size_t etm_st_dtype_size(etm_st_dtype dtype);      /* bytes per element */

/* ---- writing ------------------------------------------------------------------------------- */
typedef struct etm_st_writer etm_st_writer;

etm_st_writer *etm_st_writer_create(void);
void etm_st_writer_free(etm_st_writer *w);

/* Adds a tensor of dtype and shape (ndim <= ETM_ST_MAX_DIMS, 0 for a scalar; every dimension
 * >= 0) whose host data the writer BORROWS: it must stay valid and unchanged until etm_st_write.
 * Fails for an empty, duplicate or reserved ("__metadata__") name, or a bad shape. */
int etm_st_add(etm_st_writer *w, const char *name, etm_st_dtype dtype, int ndim,
               const int64_t *shape, const void *data, etm_error *err);
/* The same, copying the data now. */
int etm_st_add_copy(etm_st_writer *w, const char *name, etm_st_dtype dtype, int ndim,
                    const int64_t *shape, const void *data, etm_error *err);
/* The same, taking ownership of malloc'd data (freed by the writer, also when adding fails). */
int etm_st_add_owned(etm_st_writer *w, const char *name, etm_st_dtype dtype, int ndim,
                     const int64_t *shape, void *data, etm_error *err);
/* Sets a __metadata__ entry (replacing an earlier value of the key). */
int etm_st_set_metadata(etm_st_writer *w, const char *key, const char *value, etm_error *err);
/* Writes the file atomically (path.tmp.PID, then renamed): path is either untouched or complete. */
int etm_st_write(etm_st_writer *w, const char *path, etm_error *err);

/* ---- reading ------------------------------------------------------------------------------- */
typedef struct {
    const char *name;
    etm_st_dtype dtype;
    int ndim;
    int64_t shape[ETM_ST_MAX_DIMS]; /* (ndim) */
    uint64_t begin, end;            /* byte range in the data section */
} etm_st_tensor;

typedef struct etm_st_file etm_st_file;

/* Opens and validates a file; NULL and a message naming the file (and tensor) when it is bad. */
etm_st_file *etm_st_open(const char *path, etm_error *err);
void etm_st_close(etm_st_file *f);

const char *etm_st_path(const etm_st_file *f);
int etm_st_count(const etm_st_file *f);
/* Tensors sorted by name, i < etm_st_count(f). */
const etm_st_tensor *etm_st_tensor_at(const etm_st_file *f, int i);
/* NULL when there is no tensor of that name. */
const etm_st_tensor *etm_st_find(const etm_st_file *f, const char *name);
/* A __metadata__ value, or NULL. */
const char *etm_st_metadata(const etm_st_file *f, const char *key);

/* Reads tensor name into host memory dst, after checking that it exists with this dtype and
 * shape (ndim dimensions); errors name the file, the tensor, and both dtypes or shapes. */
int etm_st_read(etm_st_file *f, const char *name, etm_st_dtype dtype, int ndim,
                const int64_t *shape, void *dst, etm_error *err);

/* Formats a shape as "(2, 3)" ("()" for a scalar) into buf. */
const char *etm_st_shape_string(int ndim, const int64_t *shape, char *buf, size_t len);

#endif
