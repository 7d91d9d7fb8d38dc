//! Run a unit of work with the best instruction set this CPU has, chosen at run time: the one
//! dispatch mechanism of every op (attention, GR-KAN, Gumbel-Softmax).
//!
//! A [`Task`]'s body is written once, generic over `FMA`, and marked `#[inline(always)]` (as is
//! everything it calls in the hot loops); this module compiles it a second time inside a
//! `#[target_feature(enable = "avx2,fma")]` function, so the same source becomes 256-bit FMA
//! code on CPUs that have it and portable code elsewhere. The default build therefore needs no
//! `-C target-cpu` flag to get vector code. This is the crate's only `unsafe`: calling that
//! function after the runtime check.
//!
//! Results are bitwise reproducible per instruction set (same inputs, same [`Isa`] → same
//! bits); the two sets may differ in the last bits ([`madd`] fuses only with FMA).
//! `FLASHNECK_CPU_PORTABLE=1` forces the portable code for every op.

/// A unit of parallel work (one query block, one tile of rows, ...).
pub trait Task {
    /// Do the work; `FMA` says whether the code is compiled with AVX2 and FMA (so fused
    /// multiply-adds are one instruction and vectors hold 8 f32).
    fn run<const FMA: bool>(&mut self);
}

/// The instruction set the tasks run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
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
            return Isa::Avx2Fma;
        }
        Isa::Portable
    }

    /// Run `task` compiled for this instruction set.
    #[inline]
    pub fn run<W: Task>(self, task: &mut W) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => {
                // SAFETY: `Isa::Avx2Fma` is only produced by `detect` after
                // `is_x86_feature_detected!` confirmed AVX2 and FMA, the features
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

/// `a · b + c`, fused (one rounding) when the caller runs with `FMA`, else two roundings. Never
/// fuse in portable code: without the FMA instruction `mul_add` is a slow library call.
#[inline(always)]
pub fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}
