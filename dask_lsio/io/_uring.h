/* dask-lsio io_uring core: the declarations shared by _uring.c and the cffi cdef.
 *
 * One ring belongs to one thread (SINGLE_ISSUER). A batch is an array of lsio_req filled by
 * Python in one call (lsio_fill_*), run by lsio_batch_run / lsio_batch_step with the GIL
 * released, and read back field by field. Each request walks a small state machine; its
 * index in the array is the CQE user_data, so no per-request allocation happens.
 */
#include <stdint.h>

#define LSIO_READ 0
#define LSIO_WRITE 1
#define LSIO_DELETE 2

/* Stages, also reported as the failing stage of a request. */
#define LSIO_ST_OPEN 1
#define LSIO_ST_STATX 2
#define LSIO_ST_IO 3
#define LSIO_ST_FSYNC 4
#define LSIO_ST_RENAME 5
#define LSIO_ST_UNLINK_TMP 6
#define LSIO_ST_UNLINK 7
#define LSIO_ST_CLOSE 8
#define LSIO_ST_DONE 9
#define LSIO_ST_HOOK 10 /* the batch's read hook rejected the data */

/* A read hook: called in the ring's thread for every read that succeeded, with the bytes it
 * returned, before the buffer is reused. Returns 0, or an error code stored as the request's
 * err (stage LSIO_ST_HOOK). `idx` is the request's index in the batch. */
typedef int (*lsio_hook)(void *ctx, int64_t idx, const char *data, int64_t n);

typedef struct lsio_req {
    /* inputs */
    const char *path;     /* object path (NUL-terminated) */
    const char *tmp_path; /* writes: temporary path in the same directory */
    char *buf;            /* reads: destination; writes: source */
    int64_t offset;       /* reads: file offset, or -n with length < 0 for the last n bytes */
    int64_t length;       /* reads: bytes wanted or -1 for "to EOF"; writes: bytes to write */
    int64_t cap;          /* reads: capacity of buf */
    int32_t kind;         /* LSIO_READ, LSIO_WRITE, LSIO_DELETE */
    int32_t grow;         /* reads to EOF: may replace buf by a larger C buffer */
    /* outputs */
    int32_t err;          /* 0 or a positive errno */
    int32_t err_stage;    /* stage that failed */
    int64_t start;        /* reads: where the data starts in buf (O_DIRECT alignment) */
    int64_t nbytes;       /* bytes read or written */
    int64_t file_offset;  /* reads: resolved file offset of the first byte returned */
    char *grown;          /* reads: buffer allocated here when buf was too small */
    /* private */
    int64_t done;
    int64_t asked;
    int32_t stage;
    int32_t fd;
    int32_t slot;
    int32_t fixed;
    int32_t direct;
    int32_t finished;
    int32_t lent;         /* buf is lent by the ring (hooked batches) */
} lsio_req;

typedef struct lsio_ring lsio_ring;

/* Open a ring of `depth` entries (and as many fixed-file slots). `want_flags` bit 0 asks for
 * SINGLE_ISSUER|DEFER_TASKRUN (dropped on kernels that refuse them). `iowq_bounded` raises
 * io-wq's bounded worker limit (0 keeps the kernel default). Returns NULL and sets *err. */
lsio_ring *lsio_ring_open(unsigned depth, unsigned want_flags, unsigned iowq_bounded,
                          int *err);
void lsio_ring_close(lsio_ring *r);
unsigned lsio_ring_flags(lsio_ring *r);

/* Batches: start, then run to completion or step until every request is finished. */
int lsio_batch_start(lsio_ring *r, lsio_req *reqs, int64_t n, int direct, int fsync);
int64_t lsio_batch_run(lsio_ring *r);
/* A read batch whose requests have no buffers (buf NULL): the ring lends each read one of at
 * most `depth` buffers of `bufsize` bytes while it is in flight, passes the data to `hook`,
 * and takes the buffer back, so memory stays bounded whatever the batch's size. Run it with
 * lsio_batch_run; the ring keeps its buffers for the next such batch. */
int lsio_batch_start_hooked(lsio_ring *r, lsio_req *reqs, int64_t n, int direct,
                            int64_t bufsize, lsio_hook hook, void *ctx);
int64_t lsio_batch_step(lsio_ring *r, int64_t *out, int64_t max_out);
int lsio_batch_cancel(lsio_ring *r);

/* Fill request arrays from flat arrays, so Python builds no object per request. */
void lsio_fill_reads(lsio_req *reqs, int64_t n, const char *paths, const int64_t *path_at,
                     const int64_t *offsets, const int64_t *lengths, const uint64_t *buf_addr,
                     const int64_t *caps, int grow);
void lsio_fill_writes(lsio_req *reqs, int64_t n, const char *paths, const int64_t *path_at,
                      const char *tmp_paths, const int64_t *tmp_at, const uint64_t *buf_addr,
                      const int64_t *lengths);
void lsio_fill_deletes(lsio_req *reqs, int64_t n, const char *paths, const int64_t *path_at);
/* Copy the outcome of the requests listed in idx into flat arrays indexed like reqs. */
void lsio_collect(lsio_req *reqs, const int64_t *idx, int64_t k, int32_t *err,
                  int32_t *err_stage, int64_t *start, int64_t *nbytes, uint64_t *grown);

void *lsio_alloc(int64_t size);
void lsio_free(void *p);
