//! Run a unit of work with the best instruction set this CPU has, chosen at run time: the one
//! dispatch mechanism of every op (attention, GR-KAN, Gumbel-Softmax).
//!
//! A [`Task`]'s body is written once, generic over `FMA`, and marked `#[inline(always)]` (as is
//! everything it calls in the hot loops); this module compiles it a second time inside a
//! `#[target_feature(enable = "avx2,fma")]` function, so the same source becomes 256-bit FMA
//! code on CPUs that have it and portable code elsewhere. The default build therefore needs no
//! `-C target-cpu` flag to get vector code. Tasks that gain from 512-bit vectors ([`Task::WIDE`])
//! get a third compilation with AVX-512 where the CPU has it (`FLASHNECK_CPU_NO_AVX512=1` turns
//! that off). This is the crate's only `unsafe`: calling those functions after the runtime check.
//!
//! Results are bitwise reproducible per instruction set (same inputs, same [`Isa`] → same
//! bits); the two sets may differ in the last bits ([`madd`] fuses only with FMA).
//! `FLASHNECK_CPU_PORTABLE=1` forces the portable code for every op.

/// A unit of parallel work (one query block, one tile of rows, ...).
pub trait Task {
    /// Whether this task runs faster with 512-bit vectors where the CPU has AVX-512. Measured,
    /// not assumed: attention's register-blocked tile products gain about 1.3x on AVX-512
    /// hardware, while GR-KAN's backward and Gumbel's Philox loop lose (so they keep AVX2).
    const WIDE: bool = false;

    /// Do the work; `FMA` says whether the code is compiled with AVX2 and FMA (so fused
    /// multiply-adds are one instruction and vectors hold 8 f32).
    fn run<const FMA: bool>(&mut self);
}

/// The instruction set the tasks run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 with AVX-512 (F, VL) besides AVX2 and FMA (checked at run time): the same code
    /// as `Avx2Fma`, compiled so that LLVM may use 512-bit vectors and 32 registers.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// x86-64 with AVX2 and FMA (checked at run time).
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// Whatever the compilation target guarantees (SSE2 on x86-64).
    Portable,
}

impl Isa {
    /// The best available instruction set. Setting `FLASHNECK_CPU_PORTABLE=1` forces the
    /// portable code (to test it on a machine that has AVX2).
    pub fn detect() -> Isa {
        if std::env::var_os("FLASHNECK_CPU_PORTABLE").is_some_and(|v| v == "1") {
            return Isa::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            if std::env::var_os("FLASHNECK_CPU_NO_AVX512").is_none()
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                return Isa::Avx512;
            }
            return Isa::Avx2Fma;
        }
        Isa::Portable
    }

    /// Run `task` compiled for this instruction set.
    #[inline]
    pub fn run<W: Task>(self, task: &mut W) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if W::WIDE => {
                // SAFETY: `Isa::Avx512` is only produced by `detect` after
                // `is_x86_feature_detected!` confirmed AVX-512 F/VL, AVX2 and FMA, the features
                // `run_avx512` is compiled with; the function itself is safe Rust.
                unsafe { run_avx512(task) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx2Fma => {
                // SAFETY: `Isa::Avx2Fma` and `Isa::Avx512` are only produced by `detect` after
                // `is_x86_feature_detected!` confirmed (at least) AVX2 and FMA, the features
                // `run_avx2_fma` is compiled with; the function itself is safe Rust.
                unsafe { run_avx2_fma(task) }
            }
            Isa::Portable => task.run::<false>(),
        }
    }
}

/// [`Task::run`] compiled with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2_fma<W: Task>(task: &mut W) {
    task.run::<true>()
}

/// [`Task::run`] compiled with AVX-512 F/VL besides AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn run_avx512<W: Task>(task: &mut W) {
    task.run::<true>()
}

/// `a · b + c`, fused (one rounding) when the caller runs with `FMA`, else two roundings. Never
/// fuse in portable code: without the FMA instruction `mul_add` is a slow library call.
#[inline(always)]
pub fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}
