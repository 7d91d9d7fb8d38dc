// The emulator's runtime: fibers, the per-block scheduler, barriers, warp collectives and the pool
// of OS threads that runs the blocks of a grid. See docs/cuda-emulator.md.
//
// One OS thread runs one block at a time: every CUDA thread of the block is a fiber with its own
// stack; the scheduler (the OS thread's own stack) resumes the ready fibers in thread order
// until each blocks at a __syncthreads, blocks at a warp collective or exits. A warp collective is
// resolved as soon as every lane of its mask has posted it; a barrier once no fiber is ready and
// every thread waits at the same __syncthreads. Anything else with no ready fiber left is a
// divergence or a deadlock, reported as an error instead of a hang.
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define FN_EMU_ASAN 1
#else
#define FN_EMU_ASAN 0
#endif

// After the system headers: it defines CUDA keywords as macros.
#include "cuda_emu.h"

// Fiber switching. On x86-64 a 20-instruction switch of the callee-saved registers (glibc's
// swapcontext also saves the signal mask with a system call, ~20x slower); elsewhere, or with
// -DFLASHNECK_EMU_UCONTEXT, ucontext.
#if defined(__x86_64__) && !defined(FLASHNECK_EMU_UCONTEXT)
#define FN_EMU_ASM_SWITCH 1
// fn_emu_switch(&from_sp, to_sp): saves rbp, rbx, r12-r15, MXCSR and the x87 control word on the
// current stack, stores the stack pointer in *from_sp, and restores the same from to_sp.
extern "C" void fn_emu_switch(void** from_sp, void* to_sp);
asm(R"(
    .text
    .p2align 4
    .globl fn_emu_switch
    .type fn_emu_switch, @function
fn_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size fn_emu_switch, .-fn_emu_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");
struct Context {
    void* sp = nullptr;
};
#else
#define FN_EMU_ASM_SWITCH 0
struct Context {
    ucontext_t uc;
};
#endif

__thread fn_emu::ThreadView* fn_emu_current = nullptr;

namespace {

using fn_emu::WarpOp;
using fn_emu::WarpPost;

enum class State { Ready, AtBarrier, AtWarp, Exited };

struct Fiber {
    fn_emu::ThreadView view;
    Context context;
    char* stack = nullptr;  // lowest usable address (a guard page lies below it)
    size_t stack_size = 0;
    State state = State::Ready;
    unsigned linear = 0;           // x + y*bx + z*bx*by
    unsigned barriers_passed = 0;  // how many __syncthreads this thread has completed
    // Where the fiber waits: the __syncthreads or collective call site.
    const char* file = nullptr;
    int line = 0;
    // The warp collective it waits in.
    WarpOp op = WarpOp::Sync;
    unsigned mask = 0;
    int param = 0;
    int width = 32;
    WarpPost* post = nullptr;
    void* fake_stack = nullptr;  // ASan's fake stack while switched out
};

size_t env_size(const char* name, size_t fallback) {
    const char* v = getenv(name);
    if (v == nullptr || *v == '\0') return fallback;
    char* end = nullptr;
    unsigned long long n = strtoull(v, &end, 10);
    return (end != nullptr && *end == '\0' && n > 0) ? (size_t)n : fallback;
}

size_t fiber_stack_bytes() {
    // ASan's redzones make frames several times larger.
    static const size_t bytes = env_size("FLASHNECK_EMU_STACK_KB", FN_EMU_ASAN ? 512 : 64) * 1024;
    return bytes;
}

const char* base_name(const char* path) {
    const char* slash = strrchr(path, '/');
    return slash != nullptr ? slash + 1 : path;
}

// One OS thread's block runner. Fibers and their stacks are kept for the next block.
struct Worker {
    std::vector<std::unique_ptr<Fiber>> fibers;
    size_t page = 4096;
    Context scheduler;
    Fiber* current = nullptr;
    void (*thread_fn)(void*) = nullptr;
    void* closure = nullptr;
    std::string fault;  // set by a helper or a collective that cannot be emulated
    unsigned warp_count = 0;
    unsigned thread_count = 0;
    dim3 block_idx{0, 0, 0};
    const void* scheduler_stack_bottom = nullptr;
    size_t scheduler_stack_size = 0;
    void* scheduler_fake_stack = nullptr;

    Worker() { page = (size_t)sysconf(_SC_PAGESIZE); }
    ~Worker() {
        for (auto& f : fibers) {
            if (f->stack != nullptr) munmap(f->stack - page, f->stack_size + page);
        }
    }
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    bool ensure_fibers(unsigned n, std::string& error) {
        while (fibers.size() < n) {
            auto f = std::make_unique<Fiber>();
            const size_t size = fiber_stack_bytes();
            void* mem = mmap(nullptr, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (mem == MAP_FAILED) {
                error = "emulator: cannot allocate a fiber stack";
                return false;
            }
            mprotect(mem, page, PROT_NONE);  // a stack overflow faults instead of corrupting memory
            f->stack = static_cast<char*>(mem) + page;
            f->stack_size = size;
            fibers.push_back(std::move(f));
        }
        return true;
    }
};

thread_local Worker* tl_worker = nullptr;

// Workers (with their fibers' stacks) outlive the OS threads of a launch: each thread borrows
// one for the launch and gives it back, so a launch does not map and unmap a thousand stacks.
std::mutex idle_workers_lock;
std::vector<std::unique_ptr<Worker>> idle_workers;

std::unique_ptr<Worker> borrow_worker() {
    {
        std::lock_guard<std::mutex> guard(idle_workers_lock);
        if (!idle_workers.empty()) {
            std::unique_ptr<Worker> w = std::move(idle_workers.back());
            idle_workers.pop_back();
            return w;
        }
    }
    return std::make_unique<Worker>();
}

void give_back_worker(std::unique_ptr<Worker> w) {
    std::lock_guard<std::mutex> guard(idle_workers_lock);
    idle_workers.push_back(std::move(w));
}

// ---- switching -----------------------------------------------------------------------------

inline void switch_context(Context& from, Context& to) {
#if FN_EMU_ASM_SWITCH
    fn_emu_switch(&from.sp, to.sp);
#else
    swapcontext(&from.uc, &to.uc);
#endif
}

// From a fiber back to its scheduler. A dying fiber passes `dying` so that ASan frees its fake stack.
void switch_to_scheduler(Worker& w, Fiber& f, bool dying) {
#if FN_EMU_ASAN
    __sanitizer_start_switch_fiber(dying ? nullptr : &f.fake_stack, w.scheduler_stack_bottom,
                                   w.scheduler_stack_size);
#else
    (void)dying;
#endif
    switch_context(f.context, w.scheduler);
#if FN_EMU_ASAN
    __sanitizer_finish_switch_fiber(f.fake_stack, &w.scheduler_stack_bottom, &w.scheduler_stack_size);
#endif
}

void fiber_entry() {
    Worker& w = *tl_worker;
    Fiber& f = *w.current;
#if FN_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &w.scheduler_stack_bottom, &w.scheduler_stack_size);
#endif
    w.thread_fn(w.closure);
    if (!f.view.cp_async.pending.empty()) {
        fn_emu_fault("cp.async: a copy was still in flight when its thread exited "
                     "(missing fn_cp_async_commit + fn_cp_async_wait<0>)");
    }
    f.state = State::Exited;
    switch_to_scheduler(w, f, true);
    abort();  // an exited fiber is never resumed
}

// From the scheduler into fiber `f`, until it blocks or exits.
void resume(Worker& w, Fiber& f) {
    w.current = &f;
    fn_emu_current = &f.view;
#if FN_EMU_ASAN
    __sanitizer_start_switch_fiber(&w.scheduler_fake_stack, f.stack, f.stack_size);
#endif
    switch_context(w.scheduler, f.context);
#if FN_EMU_ASAN
    __sanitizer_finish_switch_fiber(w.scheduler_fake_stack, nullptr, nullptr);
#endif
    fn_emu_current = nullptr;
    w.current = nullptr;
}

// ---- warp collectives ------------------------------------------------------------------------

const char* op_name(WarpOp op) {
    switch (op) {
        case WarpOp::Sync: return "__syncwarp";
        case WarpOp::ShflIdx: return "__shfl_sync";
        case WarpOp::ShflUp: return "__shfl_up_sync";
        case WarpOp::ShflDown: return "__shfl_down_sync";
        case WarpOp::ShflXor: return "__shfl_xor_sync";
        case WarpOp::Ballot: return "__ballot_sync";
        case WarpOp::Any: return "__any_sync";
        case WarpOp::All: return "__all_sync";
        case WarpOp::Mma16816F16: return "mma.m16n8k16.f16";
        case WarpOp::Mma16816Bf16: return "mma.m16n8k16.bf16";
        case WarpOp::Ldmatrix4: return "ldmatrix.x4";
        case WarpOp::Ldmatrix4Trans: return "ldmatrix.x4.trans";
    }
    return "warp collective";
}

float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {  // subnormal: normalise
        int e = 113;
        while ((mant & 0x400u) == 0) {
            mant <<= 1;
            --e;
        }
        bits = sign | ((uint32_t)e << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float bf16_to_float(uint16_t b) {
    const uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// Lane `lane`'s element `which` (0 = low half) of 32-bit fragment register `reg`.
float fragment_half(const WarpPost* const* posts, unsigned lane, int reg, int which, bool bf16) {
    uint32_t r;
    memcpy(&r, posts[lane]->in + 4 * reg, 4);
    const uint16_t h = (uint16_t)(which == 0 ? r & 0xffffu : r >> 16);
    return bf16 ? bf16_to_float(h) : half_to_float(h);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.f32 with the PTX ISA fragment layouts
// (groupID g = lane>>2, threadID_in_group t = lane%4):
//   A (16x16, 4 regs of 2 halves): reg0 = A[g][2t..2t+1], reg1 = A[g+8][2t..], reg2 = A[g][2t+8..],
//                                  reg3 = A[g+8][2t+8..]
//   B (16x8, 2 regs):              reg0 = B[2t..2t+1][g], reg1 = B[2t+8..2t+9][g]
//   C, D (16x8, 4 floats):         c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1]
// Post layout: in[0..16) = A regs, in[16..24) = B regs, in[24..40) = C; out[0..16) = D.
void resolve_mma(WarpPost* const* posts, bool bf16) {
    float a[16][16], b[16][8], c[16][8];
    for (unsigned lane = 0; lane < 32; ++lane) {
        const unsigned g = lane >> 2, t = lane & 3;
        for (int w = 0; w < 2; ++w) {
            a[g][2 * t + w] = fragment_half(posts, lane, 0, w, bf16);
            a[g + 8][2 * t + w] = fragment_half(posts, lane, 1, w, bf16);
            a[g][2 * t + 8 + w] = fragment_half(posts, lane, 2, w, bf16);
            a[g + 8][2 * t + 8 + w] = fragment_half(posts, lane, 3, w, bf16);
            b[2 * t + w][g] = fragment_half(posts, lane, 4, w, bf16);
            b[2 * t + 8 + w][g] = fragment_half(posts, lane, 5, w, bf16);
        }
        float cl[4];
        memcpy(cl, posts[lane]->in + 24, 16);
        c[g][2 * t] = cl[0];
        c[g][2 * t + 1] = cl[1];
        c[g + 8][2 * t] = cl[2];
        c[g + 8][2 * t + 1] = cl[3];
    }
    for (unsigned lane = 0; lane < 32; ++lane) {
        const unsigned g = lane >> 2, t = lane & 3;
        float d[4];
        for (int i = 0; i < 4; ++i) {
            const unsigned row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
            // Products of two halves are exact in f32; the sum is accumulated in f32 in k order.
            float acc = c[row][col];
            for (int k = 0; k < 16; ++k) acc += a[row][k] * b[k][col];
            d[i] = acc;
        }
        memcpy(posts[lane]->out, d, 16);
    }
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8i..8i+7 give the row addresses of
// matrix i (8 rows of 8 b16, 16 bytes each). Lane l receives in register i the pair
// M_i[l>>2][2(l%4)..2(l%4)+1], or with .trans M_i[2(l%4)..2(l%4)+1][l>>2].
bool resolve_ldmatrix(WarpPost* const* posts, bool trans, std::string& fault) {
    const unsigned char* rows[32];
    for (unsigned lane = 0; lane < 32; ++lane) {
        memcpy(&rows[lane], posts[lane]->in, sizeof(void*));
        if (((uintptr_t)rows[lane] & 15u) != 0) {
            char buf[160];
            snprintf(buf, sizeof buf, "ldmatrix: lane %u's row address %p is not 16-byte aligned", lane,
                     (const void*)rows[lane]);
            fault = buf;
            return false;
        }
    }
    for (unsigned lane = 0; lane < 32; ++lane) {
        uint32_t r[4];
        for (unsigned i = 0; i < 4; ++i) {
            uint16_t lo, hi;
            if (!trans) {
                const unsigned char* row = rows[8 * i + (lane >> 2)];
                memcpy(&lo, row + 4 * (lane & 3), 2);
                memcpy(&hi, row + 4 * (lane & 3) + 2, 2);
            } else {
                memcpy(&lo, rows[8 * i + 2 * (lane & 3)] + 2 * (lane >> 2), 2);
                memcpy(&hi, rows[8 * i + 2 * (lane & 3) + 1] + 2 * (lane >> 2), 2);
            }
            r[i] = (uint32_t)lo | ((uint32_t)hi << 16);
        }
        memcpy(posts[lane]->out, r, 16);
    }
    return true;
}

// Lanes of warp `warp` that exist in a block of `thread_count` threads.
unsigned existing_lanes(unsigned warp, unsigned thread_count) {
    const unsigned first = warp * 32;
    const unsigned n = std::min(32u, thread_count - first);
    return n == 32 ? 0xffffffffu : ((1u << n) - 1);
}

// Computes every participating lane's `out`. Lanes outside `group` (or non-existent) read as 0xff
// bytes: a NaN for floats, so a shuffle from an inactive lane cannot go unnoticed.
bool resolve_collective(Worker& w, Fiber** lanes, unsigned group, std::string& fault) {
    Fiber* first = lanes[__builtin_ctz(group)];
    const WarpOp op = first->op;
    WarpPost* posts[32] = {};
    for (unsigned l = 0; l < 32; ++l) {
        if (group & (1u << l)) posts[l] = lanes[l]->post;
    }
    switch (op) {
        case WarpOp::Sync: return true;
        case WarpOp::Ballot:
        case WarpOp::Any:
        case WarpOp::All: {
            unsigned ballot = 0;
            for (unsigned l = 0; l < 32; ++l) {
                if (posts[l] != nullptr && posts[l]->in[0] != 0) ballot |= 1u << l;
            }
            unsigned out = op == WarpOp::Ballot ? ballot : op == WarpOp::Any ? (ballot != 0) : (ballot == group);
            for (unsigned l = 0; l < 32; ++l) {
                if (posts[l] != nullptr) memcpy(posts[l]->out, &out, 4);
            }
            return true;
        }
        case WarpOp::ShflIdx:
        case WarpOp::ShflUp:
        case WarpOp::ShflDown:
        case WarpOp::ShflXor: {
            for (unsigned l = 0; l < 32; ++l) {
                if (posts[l] == nullptr) continue;
                const int width = lanes[l]->width;
                if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
                    fault = std::string(op_name(op)) + ": width must be a power of two in 1..32";
                    return false;
                }
                const int lane = (int)l, base = lane & ~(width - 1), p = lanes[l]->param;
                int src = lane;
                if (op == WarpOp::ShflIdx) src = base + (p & (width - 1));
                if (op == WarpOp::ShflUp && lane - base >= p) src = lane - p;
                if (op == WarpOp::ShflDown && lane - base + p < width) src = lane + p;
                if (op == WarpOp::ShflXor && (lane ^ p) < base + width) src = lane ^ p;
                if (src >= 0 && src < 32 && posts[src] != nullptr) {
                    memcpy(posts[l]->out, posts[src]->in, 8);
                } else {
                    memset(posts[l]->out, 0xff, 8);
                }
            }
            return true;
        }
        case WarpOp::Mma16816F16:
        case WarpOp::Mma16816Bf16:
        case WarpOp::Ldmatrix4:
        case WarpOp::Ldmatrix4Trans:
            if (group != 0xffffffffu) {
                fault = std::string(op_name(op)) + " needs all 32 lanes of the warp";
                return false;
            }
            if (op == WarpOp::Ldmatrix4 || op == WarpOp::Ldmatrix4Trans) {
                return resolve_ldmatrix(posts, op == WarpOp::Ldmatrix4Trans, fault);
            }
            resolve_mma(posts, op == WarpOp::Mma16816Bf16);
            return true;
    }
    (void)w;
    return true;
}

// Resolves warp `warp`'s pending collective if every lane of its mask has posted the same one.
// Returns false (with `fault` set) only for a collective that cannot be emulated.
bool try_resolve_warp(Worker& w, unsigned warp, std::string& fault) {
    Fiber* lanes[32];
    const unsigned exist = existing_lanes(warp, w.thread_count);
    for (unsigned l = 0; l < 32; ++l) lanes[l] = (exist & (1u << l)) ? w.fibers[warp * 32 + l].get() : nullptr;
    // Find a waiting lane; its mask names the group (lanes that do not exist are left out).
    for (unsigned l = 0; l < 32; ++l) {
        Fiber* f = lanes[l];
        if (f == nullptr || f->state != State::AtWarp) continue;
        const unsigned group = f->mask & exist;
        bool complete = true;
        for (unsigned m = 0; m < 32 && complete; ++m) {
            if (!(group & (1u << m))) continue;
            const Fiber* o = lanes[m];
            complete = o->state == State::AtWarp && o->op == f->op && o->mask == f->mask;
        }
        if (!complete) continue;
        if (!resolve_collective(w, lanes, group, fault)) return false;
        for (unsigned m = 0; m < 32; ++m) {
            if (group & (1u << m)) lanes[m]->state = State::Ready;
        }
        return true;
    }
    return true;
}

// ---- diagnostics -----------------------------------------------------------------------------

std::string describe(const Fiber& f) {
    char buf[256];
    switch (f.state) {
        case State::Exited: return "exited";
        case State::Ready: return "running";
        case State::AtBarrier:
            snprintf(buf, sizeof buf, "at __syncthreads #%u (%s:%d)", f.barriers_passed + 1, base_name(f.file), f.line);
            return buf;
        case State::AtWarp:
            snprintf(buf, sizeof buf, "at %s mask 0x%08x (%s:%d)", op_name(f.op), f.mask, base_name(f.file), f.line);
            return buf;
    }
    return "?";
}

std::string block_report(const Worker& w, const char* what) {
    char head[128];
    snprintf(head, sizeof head, "%s in block (%u,%u,%u): ", what, w.block_idx.x, w.block_idx.y, w.block_idx.z);
    std::string out = head;
    unsigned start = 0;
    std::string current = describe(*w.fibers[0]);
    for (unsigned i = 1; i <= w.thread_count; ++i) {
        std::string d = i < w.thread_count ? describe(*w.fibers[i]) : std::string();
        if (i < w.thread_count && d == current) continue;
        char range[64];
        if (i - 1 == start) {
            snprintf(range, sizeof range, "thread %u ", start);
        } else {
            snprintf(range, sizeof range, "threads %u..%u ", start, i - 1);
        }
        if (start != 0) out += ", ";
        out += range;
        out += current;
        start = i;
        current = d;
    }
    return out;
}

// Points the fiber's context at fiber_entry on its own stack. Kept out of run_block: getcontext
// returns twice, which would make the compiler distrust run_block's locals.
__attribute__((noinline)) void start_context(Fiber& f) {
#if FN_EMU_ASAN
    // A fiber abandoned mid-block (after a fault) leaves poisoned frames behind.
    __asan_unpoison_memory_region(f.stack, f.stack_size);
#endif
#if FN_EMU_ASM_SWITCH
    // The frame fn_emu_switch pops: MXCSR and x87 control word, six registers, then the "return"
    // address fiber_entry, entered with the stack aligned as after a call (rsp % 16 == 8).
    // frame[8] sits at top - 8, so fiber_entry starts with rsp = top - 8.
    const uintptr_t top = ((uintptr_t)(f.stack + f.stack_size) & ~(uintptr_t)15) - 16;
    void** frame = reinterpret_cast<void**>(top - 9 * 8);
    uint32_t control[2];
    asm volatile("stmxcsr %0" : "=m"(control[0]));
    asm volatile("fnstcw %0" : "=m"(control[1]));
    memcpy(&frame[0], control, 8);
    for (int r = 1; r <= 6; ++r) frame[r] = nullptr;  // r15 .. rbp
    frame[7] = reinterpret_cast<void*>(&fiber_entry);
    frame[8] = nullptr;  // fiber_entry's own return address: it never returns
    f.context.sp = frame;
#else
    getcontext(&f.context.uc);
    f.context.uc.uc_stack.ss_sp = f.stack;
    f.context.uc.uc_stack.ss_size = f.stack_size;
    f.context.uc.uc_link = nullptr;
    makecontext(&f.context.uc, fiber_entry, 0);
#endif
}

// ---- one block -------------------------------------------------------------------------------

// The order in which the scheduler resumes ready threads (see flashneck_emu_set_schedule):
// bit 0 = decreasing index, bit 1 = run-ahead (a warp whose collective completes runs on at once).
std::atomic<int> schedule_override{-1};
constexpr int kScheduleReverse = 1, kScheduleRunAhead = 2;

int schedule_flags() {
    static const int from_env = [] {
        const char* v = getenv("FLASHNECK_EMU_SCHEDULE");
        if (v == nullptr) return 0;
        if (strcmp(v, "reverse") == 0) return kScheduleReverse;
        if (strcmp(v, "run-ahead") == 0) return kScheduleRunAhead;
        if (strcmp(v, "reverse-run-ahead") == 0) return kScheduleReverse | kScheduleRunAhead;
        return 0;
    }();
    const int forced = schedule_override.load();
    return forced < 0 ? from_env : forced;
}

bool run_block(Worker& w, const flashneck_emu_launch_config& cfg, dim3 block_idx, std::string& error) {
    const int flags = schedule_flags();
    const bool reverse = (flags & kScheduleReverse) != 0, run_ahead = (flags & kScheduleRunAhead) != 0;
    const unsigned bx = cfg.block[0], by = cfg.block[1], bz = cfg.block[2];
    const unsigned n = bx * by * bz;
    if (!w.ensure_fibers(n, error)) return false;
    w.thread_count = n;
    w.warp_count = (n + 31) / 32;
    w.block_idx = block_idx;
    w.fault.clear();

    // Dynamic shared memory: a fresh heap buffer per block (ASan sees overruns), filled with 0xff
    // bytes so that reading an element nobody wrote gives NaN rather than a plausible zero.
    std::unique_ptr<unsigned char[]> dynamic_smem;
    if (cfg.shared_bytes > 0) {
        dynamic_smem.reset(new unsigned char[cfg.shared_bytes]);
        memset(dynamic_smem.get(), 0xff, cfg.shared_bytes);
    }

    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = *w.fibers[i];
        f.view.thread_idx = dim3{i % bx, (i / bx) % by, i / (bx * by)};
        f.view.block_idx = block_idx;
        f.view.block_dim = dim3{bx, by, bz};
        f.view.grid_dim = dim3{cfg.grid[0], cfg.grid[1], cfg.grid[2]};
        f.view.dynamic_smem = dynamic_smem.get();
        f.view.cp_async.pending.clear();  // a faulted block may have left copies behind
        f.view.cp_async.committed = 0;
        f.linear = i;
        f.state = State::Ready;
        f.barriers_passed = 0;
        f.fake_stack = nullptr;
        start_context(f);
    }

    for (;;) {
        bool ran = false;
        for (unsigned k = 0; k < n; ++k) {
            const unsigned i = reverse ? n - 1 - k : k;
            Fiber& f = *w.fibers[i];
            if (f.state != State::Ready) continue;
            ran = true;
            resume(w, f);
            if (!w.fault.empty()) {
                error = block_report(w, "emulator fault") + ": " + w.fault;
                return false;
            }
            if (f.state == State::AtWarp && !try_resolve_warp(w, i / 32, w.fault)) {
                error = block_report(w, "emulator fault") + ": " + w.fault;
                return false;
            }
            if (run_ahead && f.state == State::Ready) {
                // Its collective completed: the warp runs on to its next barrier before the sweep
                // moves to the next warp. Otherwise every warp advances one collective per sweep,
                // in lockstep, and a warp reading (by ldmatrix, after a first collective) a tile
                // other warps have not staged yet, or restaging a tile they still read, is hidden.
                const unsigned warp = i / 32;
                const unsigned first = reverse ? std::min(n - 1, warp * 32 + 31) : warp * 32;
                k = (reverse ? n - 1 - first : first) - 1;  // the loop's ++k follows (wraps at 0)
            }
        }
        if (ran) continue;

        // No fiber is ready: every thread has exited, waits at a barrier or at a collective.
        bool all_exited = true, any_exited = false, all_barrier = true, same_site = true;
        const Fiber* site = nullptr;
        for (unsigned i = 0; i < n; ++i) {
            const Fiber& f = *w.fibers[i];
            all_exited = all_exited && f.state == State::Exited;
            any_exited = any_exited || f.state == State::Exited;
            if (f.state == State::AtBarrier) {
                if (site == nullptr) site = &f;
                same_site = same_site && f.line == site->line && strcmp(f.file, site->file) == 0 &&
                            f.barriers_passed == site->barriers_passed;
            } else if (f.state != State::Exited) {
                all_barrier = false;
            }
        }
        if (all_exited) return true;
        if (all_barrier && !any_exited && same_site) {
            for (unsigned i = 0; i < n; ++i) {
                w.fibers[i]->state = State::Ready;
                w.fibers[i]->barriers_passed += 1;
            }
            continue;
        }
        error = block_report(w, site != nullptr ? "barrier divergence" : "warp collective cannot complete");
        return false;
    }
}

// 0: FLASHNECK_EMU_THREADS, else the hardware's thread count.
std::atomic<unsigned> threads_override{0};

unsigned pool_size() {
    static const unsigned size = [] {
        const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
        return (unsigned)env_size("FLASHNECK_EMU_THREADS", hw);
    }();
    const unsigned forced = threads_override.load();
    // ASan build: static shared memory is process-wide (see __shared__ in cuda_emu.h).
    return FN_EMU_ASAN ? 1 : forced != 0 ? forced : size;
}

// ASan build: one launch at a time in the whole process, for the same reason.
std::mutex asan_launch_lock;

void write_error(const std::string& message, char* err, unsigned long err_len) {
    if (err == nullptr || err_len == 0) return;
    const size_t n = std::min((size_t)err_len - 1, message.size());
    memcpy(err, message.data(), n);
    err[n] = '\0';
}

}  // namespace

extern "C" void flashneck_emu_set_threads(unsigned threads) { threads_override.store(threads); }

// 0: threads resume in increasing index order, 1: decreasing, +2: run-ahead (see run_block);
// -1: env FLASHNECK_EMU_SCHEDULE ("reverse", "run-ahead", "reverse-run-ahead", else forward).
extern "C" void flashneck_emu_set_schedule(int order) { schedule_override.store(order); }

extern "C" int flashneck_emu_built_with_asan() { return FN_EMU_ASAN; }

extern "C" void fn_emu_syncthreads(const char* file, int line) {
    Worker& w = *tl_worker;
    Fiber& f = *w.current;
    f.state = State::AtBarrier;
    f.file = file;
    f.line = line;
    switch_to_scheduler(w, f, false);
}

extern "C" void fn_emu_warp_collective(WarpOp op, unsigned mask, int param, int width, WarpPost* post,
                                       const char* file, int line) {
    Worker& w = *tl_worker;
    Fiber& f = *w.current;
    if ((mask & (1u << (f.linear % 32))) == 0) {
        char buf[160];
        snprintf(buf, sizeof buf, "%s at %s:%d: mask 0x%08x does not include the calling lane %u", op_name(op),
                 base_name(file), line, mask, f.linear % 32);
        fn_emu_fault(buf);
    }
    f.state = State::AtWarp;
    f.op = op;
    f.mask = mask;
    f.param = param;
    f.width = width;
    f.post = post;
    f.file = file;
    f.line = line;
    switch_to_scheduler(w, f, false);
}

extern "C" void fn_emu_fault(const char* message) {
    Worker& w = *tl_worker;
    Fiber& f = *w.current;
    if (w.fault.empty()) w.fault = message;
    // The block is abandoned: this fiber is never resumed.
    f.state = State::Exited;
    switch_to_scheduler(w, f, true);
    abort();
}

extern "C" int fn_emu_run_grid(const flashneck_emu_launch_config* cfg, void (*thread_fn)(void*), void* closure,
                               char* err, unsigned long err_len) {
    const unsigned long long threads = (unsigned long long)cfg->block[0] * cfg->block[1] * cfg->block[2];
    const unsigned long long blocks = (unsigned long long)cfg->grid[0] * cfg->grid[1] * cfg->grid[2];
    // The limits of sm_80/sm_90: 1024 threads, block z <= 64, grid y/z <= 65535, and at most
    // 227 KiB of dynamic shared memory per block (with the opt-in attribute).
    if (threads == 0 || threads > 1024 || cfg->block[2] > 64 || blocks == 0 || cfg->grid[1] > 65535 ||
        cfg->grid[2] > 65535 || cfg->shared_bytes > 227u * 1024u) {
        char buf[200];
        snprintf(buf, sizeof buf,
                 "invalid launch configuration: grid (%u,%u,%u), block (%u,%u,%u), %u bytes of dynamic shared memory",
                 cfg->grid[0], cfg->grid[1], cfg->grid[2], cfg->block[0], cfg->block[1], cfg->block[2],
                 cfg->shared_bytes);
        write_error(buf, err, err_len);
        return 1;
    }
    if (tl_worker != nullptr && tl_worker->current != nullptr) {
        write_error("emulator: a kernel cannot launch another kernel", err, err_len);
        return 1;
    }

    std::unique_lock<std::mutex> asan_guard(asan_launch_lock, std::defer_lock);
    if (FN_EMU_ASAN) asan_guard.lock();

    std::atomic<unsigned long long> next{0};
    std::atomic<bool> failed{false};
    std::mutex error_lock;
    std::string first_error;
    auto work = [&] {
        std::unique_ptr<Worker> borrowed = borrow_worker();
        Worker& w = *borrowed;
        Worker* const outer = tl_worker;
        tl_worker = &w;
        w.thread_fn = thread_fn;
        w.closure = closure;
        for (;;) {
            const unsigned long long b = next.fetch_add(1);
            if (b >= blocks || failed.load()) break;
            const dim3 idx{(unsigned)(b % cfg->grid[0]), (unsigned)((b / cfg->grid[0]) % cfg->grid[1]),
                           (unsigned)(b / ((unsigned long long)cfg->grid[0] * cfg->grid[1]))};
            std::string error;
            if (!run_block(w, *cfg, idx, error)) {
                std::lock_guard<std::mutex> guard(error_lock);
                if (first_error.empty()) first_error = error;
                failed.store(true);
                break;
            }
        }
        tl_worker = outer;
        give_back_worker(std::move(borrowed));
    };
    const unsigned workers = (unsigned)std::min<unsigned long long>(pool_size(), blocks);
    std::vector<std::thread> pool;
    for (unsigned i = 1; i < workers; ++i) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
    if (failed.load()) {
        write_error(first_error, err, err_len);
        return 1;
    }
    return 0;
}
