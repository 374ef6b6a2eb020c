/* dask-lsio decode kernel: the declarations shared by _kernel.c, _kernel_codecs.c (with
 * blosc encoding), _kernel_gather.c (encoders' input) and the cffi cdef.
 *
 * A plan describes one block of a Zarr array being read: where each chunk's bytes lie in the
 * reads of one engine batch, and where its values go in the block's output array. The
 * io_uring engine calls lsio_kernel_hook for every completed read (with the GIL released);
 * the hook decodes the read's chunks and places them, straight into the output when a chunk
 * lands in a contiguous piece of it, else through a scratch buffer and one strided copy.
 */
#include <stdint.h>

#define LSIO_KMAXDIM 16

/* codecs (the single bytes->bytes codec of the chain, after an identity "bytes") */
#define LSIO_CODEC_NONE 0
#define LSIO_CODEC_BLOSC 1
#define LSIO_CODEC_ZSTD 2
#define LSIO_CODEC_ZLIB 3 /* numcodecs' zlib: one zlib stream (Python's zlib.decompress) */
#define LSIO_CODEC_GZIP 4 /* numcodecs' gzip: gzip members (Python's gzip module) */

/* job errors */
#define LSIO_KERR_TRUNCATED 1 /* the chunk's byte range runs past the data read */
#define LSIO_KERR_CORRUPT 2   /* the codec rejected the data */
#define LSIO_KERR_SIZE 3      /* the data decodes to the wrong number of bytes */
#define LSIO_KERR_NOMEM 4

typedef struct lsio_kplan {
    int32_t codec;
    int32_t ndim;
    int32_t partial; /* blosc chunks a job needs a part of: decode only the blocks it needs
                      * (faster; corruption elsewhere in the chunk then goes unnoticed) */
    int32_t stream;  /* place with non-temporal stores (a large output: _kernel_copy.h) */
    int64_t itemsize;
    int64_t chunk_shape[LSIO_KMAXDIM]; /* the decoded chunk, C order */
    int64_t dest_strides[LSIO_KMAXDIM]; /* of the output array, in bytes */
    char *dest;                         /* the output array */
    const int64_t *job_at; /* jobs of read i: job_at[i] .. job_at[i + 1] - 1 */
    const int64_t *src_off; /* per job: where its bytes start in the read's data */
    const int64_t *src_len; /* per job: how many (-1: all the read returned) */
    const int64_t *dst_off; /* per job: byte offset in dest of its first value placed */
    const int64_t *sel;     /* per job: ndim starts, then ndim counts, within the chunk */
    int32_t *job_err;       /* per job, out: 0 or LSIO_KERR_* */
    char *scratch;          /* one decoded chunk, for chunks that are not placed whole */
    int64_t *decoded;       /* out: bytes the codecs produced (chunks or their parts) */
} lsio_kplan;

/* Which LSIO_CODEC_* this build decodes: bit (1 << codec). */
uint32_t lsio_kernel_codecs(void);

/* Tests: bytes zlib is given (in and out) per inflate call (zlib counts in 32 bits; default
 * 1 GiB), and the per-thread zstd contexts alive (freed when their thread exits). */
void lsio_kernel_set_zlib_step(int64_t step);
int64_t lsio_kernel_zstd_contexts(void);

/* Copy the strided array at src (ndim dims of `shape`, byte `strides`) into dst in C order
 * (an encoder's contiguous input). Returns 0, or -1 for invalid dimensions (nothing copied). */
int lsio_kernel_gather(const char *src, int32_t ndim, const int64_t *shape,
                       const int64_t *strides, int64_t itemsize, char *dst);

/* Byte ranges (n, sorted by shard then offset: shard[k], off[k] to end[k]) merged into
 * reads: a range goes on in the read before it when of the same shard, at most gap bytes
 * past the read's furthest byte, and the read then spans at most limit bytes. Writes the
 * index of each read's first range to firsts (room for n); returns the number of reads. */
int64_t lsio_kernel_coalesce(int64_t n, const int64_t *shard, const int64_t *off,
                             const int64_t *end, int64_t gap, int64_t limit, int64_t *firsts);

/* c-blosc 1.x compression of the n bytes at src into dst (cap bytes, at least n + 16), as
 * numcodecs' Blosc.encode does it (one thread, a context of this call's own), with the GIL
 * released: the compressed size, or -1 when c-blosc refuses (n past its 2 GiB limit, an
 * unknown compressor name, clevel or shuffle out of range). */
int64_t lsio_kernel_encode_blosc(const char *src, int64_t n, char *dst, int64_t cap,
                                 int32_t clevel, int32_t shuffle, int64_t typesize,
                                 const char *cname, int64_t blocksize);

/* Many write units of one block in one call (the GIL released once): unit i is the
 * strided array at src + origins[i] (ndim dims of `shape`, byte `strides`), gathered into
 * scratch (scratch_cap bytes, at least a unit's), skipped when fill is not NULL and every
 * item equals the itemsize bytes at fill (sizes[i] = 0), else blosc-encoded as
 * lsio_kernel_encode_blosc does, right after the unit before it in dst (sizes[i] its bytes).
 * dst needs room for every unit's worst case: nunits * (unit bytes + 16). Returns the bytes
 * used in dst, or -1 (invalid dimensions, no room, c-blosc refused: sizes are then not all
 * set). The caller guarantees every unit lies inside src's array. */
int64_t lsio_kernel_encode_blosc_units(const char *src, int32_t ndim, const int64_t *shape,
                                       const int64_t *strides, int64_t itemsize,
                                       int64_t nunits, const int64_t *origins,
                                       const char *fill, char *scratch, int64_t scratch_cap,
                                       char *dst, int64_t cap, int64_t *sizes,
                                       int32_t clevel, int32_t shuffle, const char *cname,
                                       int64_t blocksize);

/* Whether the n bytes at p are backed by memory already (mincore of up to 16 pages spread
 * over them, every one resident): 1 or 0. Non-temporal stores pay off only there: into fresh
 * memory, each page's first-touch fault has just zeroed it through the cache. */
int lsio_kernel_mapped(const char *p, int64_t n);

/* The hook for hooked read batches: ctx is a lsio_kplan. Returns 0 or 1 (see job_err). */
int lsio_kernel_hook(void *ctx, int64_t idx, const char *data, int64_t n);
