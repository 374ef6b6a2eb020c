/* dask-lsio decode kernel: placing bytes in the output, through the caches or around them.
 *
 * A large block (a dask task's, plan.stream: lsio.nontemporal-bytes) is far larger than
 * the caches and is read by its consumer from memory anyway. Ordinary stores first read
 * each output line from memory (read for ownership) and then write it back: non-temporal
 * stores only write. On the 2-core VM, a warm scan of 2^20 1 KiB chunks took 0.54 s
 * instead of 0.78-0.81 and one of 64 KiB chunks 0.25 s instead of 0.32 (bench_read D, A).
 * Small outputs (a crop batch) stay with ordinary stores: their reader finds them in cache;
 * so does fresh memory, which each page's first-touch fault has just zeroed through the cache
 * (a z[:] into a new 1 GiB array streamed: 0.90x; lsio_kernel_mapped tells them apart).
 * A thread that streamed must fence (lsio_copy_fence) before others may read what it wrote.
 */
#ifndef LSIO_KERNEL_COPY_H
#define LSIO_KERNEL_COPY_H
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Stores of 16 bytes may stream when asked to and dst is 16-byte aligned (x86 only). */
static inline int lsio_can_stream(const void *dst, int stream) {
#ifdef __SSE2__
    return stream && ((uintptr_t)dst & 15) == 0;
#else
    (void)dst;
    (void)stream;
    return 0;
#endif
}

/* memcpy, with non-temporal stores for the 16-byte aligned middle of a run of 64 or more
 * bytes when `stream` (shorter runs, and the edges, go through the cache). */
static inline void lsio_copy(char *dst, const char *src, int64_t n, int stream) {
#ifdef __SSE2__
    if (stream && n >= 64) {
        int64_t head = (int64_t)((16 - ((uintptr_t)dst & 15)) & 15);
        memcpy(dst, src, (size_t)head);
        dst += head, src += head, n -= head;
        for (; n >= 16; dst += 16, src += 16, n -= 16)
            _mm_stream_si128((__m128i *)dst, _mm_loadu_si128((const __m128i *)src));
    }
#endif
    memcpy(dst, src, (size_t)n);
}

/* Order this thread's non-temporal stores before whatever it does next (a completion that
 * lets another thread read the output). */
static inline void lsio_copy_fence(int stream) {
#ifdef __SSE2__
    if (stream) _mm_sfence();
#else
    (void)stream;
#endif
}

#endif
