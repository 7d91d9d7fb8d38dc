// Emulator self-test kernels (crates/flashneck-cuda/tests/emulator.rs): each exercises one piece
// of the execution model with a result the test computes independently.
#include "common.cuh"

// Block sum of x[blockIdx.x * blockDim.x + i] in shared memory, tree reduction with a barrier per
// level (blockDim.x a power of two, at most 1024).
extern "C" __global__ void __launch_bounds__(1024)
    emu_selftest_block_sum(const float* __restrict__ x, float* __restrict__ out, int n) {
    __shared__ float partial[1024];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    partial[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}
FLASHNECK_EXPORT(emu_selftest_block_sum)

// Every thread writes its coordinates: out[8 * global_linear + {0..7}] = threadIdx.xyz,
// blockIdx.xyz, blockDim.x * blockDim.y * blockDim.z, gridDim.x * gridDim.y * gridDim.z.
extern "C" __global__ void emu_selftest_indices(unsigned* __restrict__ out) {
    const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned* o = out + 8ull * (block * threads + thread);
    o[0] = threadIdx.x;
    o[1] = threadIdx.y;
    o[2] = threadIdx.z;
    o[3] = blockIdx.x;
    o[4] = blockIdx.y;
    o[5] = blockIdx.z;
    o[6] = threads;
    o[7] = gridDim.x * gridDim.y * gridDim.z;
}
FLASHNECK_EXPORT(emu_selftest_indices)

// Reverses each block's slice of x through dynamic shared memory (blockDim.x floats).
extern "C" __global__ void emu_selftest_reverse(const float* __restrict__ x, float* __restrict__ out) {
    FN_DYNAMIC_SMEM(float, tile);
    const unsigned base = blockIdx.x * blockDim.x;
    tile[threadIdx.x] = x[base + threadIdx.x];
    __syncthreads();
    out[base + threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}
FLASHNECK_EXPORT(emu_selftest_reverse)

// Warp collectives on x (one value per thread, 1-D blocks of whole warps). For thread i (lane l):
//   out[7i+0] = __shfl_sync(full, x, (5l + 3) % 32, width)
//   out[7i+1] = __shfl_up_sync(full, x, delta, width)
//   out[7i+2] = __shfl_down_sync(full, x, delta, width)
//   out[7i+3] = __shfl_xor_sync(full, x, delta, width)
//   out[7i+4] = __ballot_sync(full, x > 0)  (as float bits)
//   out[7i+5] = __any_sync(full, x > 2), out[7i+6] = __all_sync(full, x > -2)
//   and then, within the lower half-warp only (mask 0xffff), out[7i+4] of lanes < 16 is replaced by
//   __ballot_sync(0xffff, x > 0) + 1 to exercise a partial mask.
extern "C" __global__ void emu_selftest_warp(const float* __restrict__ x, float* __restrict__ out, int delta,
                                             int width) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned lane = threadIdx.x % 32;
    const float v = x[i];
    float* o = out + 7ull * i;
    o[0] = __shfl_sync(0xffffffffu, v, (5 * lane + 3) % 32, width);
    o[1] = __shfl_up_sync(0xffffffffu, v, delta, width);
    o[2] = __shfl_down_sync(0xffffffffu, v, delta, width);
    o[3] = __shfl_xor_sync(0xffffffffu, v, delta, width);
    o[4] = __uint_as_float(__ballot_sync(0xffffffffu, v > 0.0f));
    o[5] = (float)__any_sync(0xffffffffu, v > 2.0f);
    o[6] = (float)__all_sync(0xffffffffu, v > -2.0f);
    __syncwarp();
    if (lane < 16) o[4] = __uint_as_float(__ballot_sync(0xffffu, v > 0.0f) + 1u);
}
FLASHNECK_EXPORT(emu_selftest_warp)

// Threads with threadIdx.x >= keep return before the block's barrier: barrier divergence.
extern "C" __global__ void emu_selftest_exit_before_barrier(float* __restrict__ out, int keep) {
    if ((int)threadIdx.x >= keep) return;
    out[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = 2.0f;
}
FLASHNECK_EXPORT(emu_selftest_exit_before_barrier)

// Threads below `split` wait at one __syncthreads, the others at another: barrier divergence.
extern "C" __global__ void emu_selftest_two_barriers(float* __restrict__ out, int split) {
    if ((int)threadIdx.x < split) {
        out[threadIdx.x] = 1.0f;
        __syncthreads();
    } else {
        out[threadIdx.x] = 2.0f;
        __syncthreads();
    }
}
FLASHNECK_EXPORT(emu_selftest_two_barriers)

// Lane `gone` exits, the rest of the warp shuffles with the full mask: cannot complete.
extern "C" __global__ void emu_selftest_shuffle_after_exit(float* __restrict__ out, int gone) {
    if ((int)threadIdx.x == gone) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (float)threadIdx.x, 1);
}
FLASHNECK_EXPORT(emu_selftest_shuffle_after_exit)

// One warp per block runs one mma: block b reads its lanes' fragments a[(32b + l) * 4 + r],
// b[(32b + l) * 2 + r], c[(32b + l) * 4 + r] and writes d[(32b + l) * 4 + r].
extern "C" __global__ void emu_selftest_mma(const unsigned* __restrict__ a, const unsigned* __restrict__ b,
                                            const float* __restrict__ c, float* __restrict__ d, int bf16) {
    const unsigned t = blockIdx.x * 32 + threadIdx.x;
    unsigned fa[4], fb[2];
    float fc[4], fd[4];
    for (int r = 0; r < 4; ++r) fa[r] = a[4 * t + r];
    for (int r = 0; r < 2; ++r) fb[r] = b[2 * t + r];
    for (int r = 0; r < 4; ++r) fc[r] = c[4 * t + r];
    if (bf16) {
        fn_mma_m16n8k16_bf16(fd, fa, fb, fc);
    } else {
        fn_mma_m16n8k16_f16(fd, fa, fb, fc);
    }
    for (int r = 0; r < 4; ++r) d[4 * t + r] = fd[r];
}
FLASHNECK_EXPORT(emu_selftest_mma)

// One warp: m holds four 8x8 b16 matrices as 32 rows of 8 (matrix i = rows 8i..8i+7). They are
// copied to shared memory with a padded row stride of 24 elements; lane l passes row l to
// ldmatrix (.trans when trans != 0) and writes its four registers to out[4l + i].
extern "C" __global__ void emu_selftest_ldmatrix(const unsigned short* __restrict__ m, unsigned* __restrict__ out,
                                                 int trans) {
    __shared__ __align__(16) unsigned short tile[32 * 24];
    const unsigned lane = threadIdx.x;
    for (int k = 0; k < 8; ++k) tile[lane * 24 + k] = m[lane * 8 + k];
    __syncwarp();
    unsigned r[4];
    if (trans) {
        fn_ldmatrix_x4_trans(r, &tile[lane * 24]);
    } else {
        fn_ldmatrix_x4(r, &tile[lane * 24]);
    }
    for (int i = 0; i < 4; ++i) out[4 * lane + i] = r[i];
}
FLASHNECK_EXPORT(emu_selftest_ldmatrix)

// One warp computes D (16x8, f32, row-major) = A (16x16, row-major) * B (16x8, row-major [k][n])
// the way a tensor-core kernel does: cp.async both tiles to shared memory, ldmatrix A, ldmatrix
// .trans B, one mma. Checks that the helpers compose into a matrix product.
extern "C" __global__ void emu_selftest_mma_tile(const unsigned short* __restrict__ a,
                                                 const unsigned short* __restrict__ b, float* __restrict__ d,
                                                 int bf16) {
    __shared__ __align__(16) unsigned short sa[16 * 24];  // padded rows: 48 bytes
    __shared__ __align__(16) unsigned short sb[16 * 8];
    const unsigned lane = threadIdx.x;
    // 16 rows of A are 32 chunks of 16 bytes; 16 rows of B are 16 chunks.
    fn_cp_async_16(&sa[(lane / 2) * 24 + (lane % 2) * 8], &a[(lane / 2) * 16 + (lane % 2) * 8]);
    if (lane < 16) fn_cp_async_16(&sb[lane * 8], &b[lane * 8]);
    fn_cp_async_commit();
    fn_cp_async_wait<0>();
    __syncwarp();
    unsigned fa[4], fb[4];
    // Matrices 0..3 of A: rows 0-7/8-15 x cols 0-7, then rows 0-7/8-15 x cols 8-15.
    fn_ldmatrix_x4(fa, &sa[(lane % 16) * 24 + (lane / 16) * 8]);
    // B rows k = 0..15 (matrices 0, 1); lanes 16..31 repeat them (matrices 2, 3 unused).
    fn_ldmatrix_x4_trans(fb, &sb[(lane % 16) * 8]);
    const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float acc[4];
    if (bf16) {
        fn_mma_m16n8k16_bf16(acc, fa, fb, zero);
    } else {
        fn_mma_m16n8k16_f16(acc, fa, fb, zero);
    }
    const unsigned g = lane / 4, t = lane % 4;
    d[g * 8 + 2 * t] = acc[0];
    d[g * 8 + 2 * t + 1] = acc[1];
    d[(g + 8) * 8 + 2 * t] = acc[2];
    d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}
FLASHNECK_EXPORT(emu_selftest_mma_tile)

// f32 -> f16/bf16 -> f32 through the helpers: h[i] = fn_f2h(x[i]), bf[i] = fn_f2bf(x[i]),
// back[2i] = fn_h2f(h_in[i]), back[2i+1] = fn_bf2f(h_in[i]).
extern "C" __global__ void emu_selftest_convert(const float* __restrict__ x, const unsigned short* __restrict__ h_in,
                                                unsigned short* __restrict__ h, unsigned short* __restrict__ bf,
                                                float* __restrict__ back, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    h[i] = fn_f2h(x[i]);
    bf[i] = fn_f2bf(x[i]);
    back[2 * i] = fn_elem<fn_f16_t>::load(h_in, i);
    back[2 * i + 1] = fn_elem<fn_bf16_t>::load(h_in, i);
}
FLASHNECK_EXPORT(emu_selftest_convert)

// Writes x[i] for every thread i of the grid, however long x is: the out-of-bounds kernel that
// AddressSanitizer must catch (tests/emulator.rs, asan_reports_heap_and_shared_overflows).
extern "C" __global__ void emu_selftest_write_all(float* __restrict__ x) {
    x[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}
FLASHNECK_EXPORT(emu_selftest_write_all)

// Copies 4 floats per thread from src + offset through shared memory with cp.async: the emulator
// faults when src + offset is not 16-byte aligned, as the instruction requires.
extern "C" __global__ void emu_selftest_cp_async(const float* __restrict__ src, float* __restrict__ dst, int offset) {
    __shared__ __align__(16) float stage[4 * 64];
    fn_cp_async_16(&stage[4 * threadIdx.x], src + offset + 4 * threadIdx.x);
    fn_cp_async_commit();
    fn_cp_async_wait<0>();
    __syncthreads();
    for (int k = 0; k < 4; ++k) dst[4 * threadIdx.x + k] = stage[4 * threadIdx.x + k];
}
FLASHNECK_EXPORT(emu_selftest_cp_async)

// Two commit groups of cp.async (src[0..256) into `first`, src[256..512) into `second`), then
// `fn_cp_async_wait<waited>` (1: only the older group is covered, 0: both) and a barrier; every
// thread copies both stages to dst. The emulator lands a copy only at the wait covering its group,
// so with waited = 1 the second stage must still read as poison (0xff bytes: NaN). waited = 2 is
// waited = 1 without the final wait: the threads exit with the second group in flight, a fault.
extern "C" __global__ void emu_selftest_cp_async_groups(const float* __restrict__ src, float* __restrict__ dst,
                                                        int waited) {
    __shared__ __align__(16) float first[256];
    __shared__ __align__(16) float second[256];
    fn_cp_async_16(&first[4 * threadIdx.x], src + 4 * threadIdx.x);
    fn_cp_async_commit();
    fn_cp_async_16(&second[4 * threadIdx.x], src + 256 + 4 * threadIdx.x);
    fn_cp_async_commit();
    if (waited >= 1) {
        fn_cp_async_wait<1>();
    } else {
        fn_cp_async_wait<0>();
    }
    __syncthreads();
    for (int k = 0; k < 4; ++k) {
        dst[4 * threadIdx.x + k] = first[4 * threadIdx.x + k];
        dst[256 + 4 * threadIdx.x + k] = second[4 * threadIdx.x + k];
    }
    if (waited != 2) fn_cp_async_wait<0>();  // nothing may stay in flight when a thread exits
}
FLASHNECK_EXPORT(emu_selftest_cp_async_groups)

// Checks that static shared memory belongs to the block: every round each thread writes its
// block's tag, and after a barrier reads its neighbour's slot; a slot holding another block's tag
// (shared memory shared between blocks running in parallel) counts into bad[blockIdx.x].
extern "C" __global__ void emu_selftest_shared_owner(unsigned* __restrict__ bad) {
    __shared__ unsigned owner[256];
    for (unsigned round = 0; round < 16; ++round) {
        const unsigned tag = blockIdx.x * 1000u + round;
        owner[threadIdx.x] = tag;
        __syncthreads();
        if (owner[(threadIdx.x + 1) % blockDim.x] != tag) atomicAdd(&bad[blockIdx.x], 1u);
        __syncthreads();
    }
}
FLASHNECK_EXPORT(emu_selftest_shared_owner)

// out[t] = tile[(t + 1) % 64] + tile[index] after every thread wrote tile[t] = t (64 threads):
// with index >= 64 a static shared-memory overrun, which the ASan build must catch.
extern "C" __global__ void emu_selftest_shared_read(float* __restrict__ out, int index) {
    __shared__ float tile[64];
    tile[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = tile[(threadIdx.x + 1) % 64] + tile[index];
}
FLASHNECK_EXPORT(emu_selftest_shared_read)

// A race: each thread writes tile[t] = x[t] and then, WITHOUT a barrier, reads its lower
// neighbour's slot: out[t] = tile[t - 1] (t > 0). Correct only when thread t - 1 happens to run
// first, i.e. in the emulator's forward schedule; the reverse schedule exposes it.
extern "C" __global__ void emu_selftest_missing_barrier(const float* __restrict__ x, float* __restrict__ out) {
    __shared__ float tile[256];
    tile[threadIdx.x] = x[threadIdx.x];
    if (threadIdx.x > 0) out[threadIdx.x] = tile[threadIdx.x - 1];
    __syncthreads();
    tile[threadIdx.x] = -1.0f;  // leftovers for the next block on this thread: never valid data
}
FLASHNECK_EXPORT(emu_selftest_missing_barrier)
