//! The Rust face of the CPU emulator of the CUDA execution model (docs/cuda-emulator.md).
//!
//! build.rs compiles every kernels/cuda/*.cu with `-DFLASHNECK_EMU` into a static library; each
//! `FLASHNECK_EXPORT(name)` becomes a C function that runs a grid of `name` on the CPU, with every
//! CUDA thread a fiber, so barriers, shuffles and tensor-core fragments behave as on the GPU.
//! Device pointers are plain host addresses.

use std::ffi::{c_char, c_int, c_ulong, c_void};

/// Grid, block and dynamic shared memory of one emulated launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmuLaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

/// `flashneck_emu_launch_config` of kernels/cuda/emu/cuda_emu.h.
#[repr(C)]
struct RawLaunchConfig {
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
}

type LaunchFn =
    unsafe extern "C" fn(*const RawLaunchConfig, *mut *mut c_void, *mut c_char, c_ulong) -> c_int;

/// One exported kernel: its launcher and the number of its parameters.
struct EmuKernel {
    name: &'static str,
    launch: LaunchFn,
    arity: unsafe extern "C" fn() -> c_int,
}

include!(concat!(env!("OUT_DIR"), "/emu_kernels.rs"));

unsafe extern "C" {
    fn flashneck_emu_set_threads(threads: u32);
    fn flashneck_emu_built_with_asan() -> c_int;
    fn flashneck_emu_set_schedule(order: c_int);
}

/// Room for the emulator's error message (a divergence report names thread ranges).
const ERROR_BYTES: usize = 4096;

/// Run `kernel` under the emulator and wait for it.
///
/// `args` follows `cuLaunchKernel`'s convention: entry `i` points at the value of the kernel's
/// `i`-th parameter, of exactly that parameter's type; device pointers are host addresses that
/// must stay valid, and large enough for what the kernel reads and writes, until this returns.
/// Returns `Err` for an unknown kernel, a wrong number of arguments, an invalid launch
/// configuration, or a fault the emulator detected (barrier divergence, a warp collective that
/// cannot complete, a misaligned `ldmatrix`/`cp.async`).
///
/// # Safety
///
/// The emulated kernel reads and writes through the pointers in `args` without any check. The
/// caller guarantees that entry `i` points at a live, properly aligned value of the type of the
/// kernel's `i`-th parameter, and that every pointer-typed argument value is null (only where
/// the kernel never dereferences it) or points at host memory, valid for reads and (for what the
/// kernel writes) writes, of at least the extent the kernel accesses for the given sizes and
/// `cfg`, not accessed by anything else until this returns.
pub unsafe fn launch(
    kernel: &str,
    cfg: &EmuLaunchConfig,
    args: &mut [*mut c_void],
) -> Result<(), String> {
    let entry = KERNELS
        .iter()
        .find(|k| k.name == kernel)
        .ok_or_else(|| format!("emulated kernel `{kernel}` does not exist"))?;
    // SAFETY: a generated C function without parameters that returns a constant.
    let arity = unsafe { (entry.arity)() };
    if usize::try_from(arity).ok() != Some(args.len()) {
        return Err(format!(
            "emulated kernel `{kernel}` takes {arity} arguments, {} given",
            args.len()
        ));
    }
    if args.iter().any(|a| a.is_null()) {
        return Err(format!(
            "emulated kernel `{kernel}`: an argument pointer is null"
        ));
    }
    let raw = RawLaunchConfig {
        grid: cfg.grid,
        block: cfg.block,
        shared_bytes: cfg.shared_bytes,
    };
    let mut error = vec![0u8; ERROR_BYTES];
    // SAFETY: `raw` and `error` outlive the call, `error.len()` bounds the message written, and
    // `args` holds one non-null pointer per kernel parameter (checked above); the caller guarantees
    // what each points at (this function's `# Safety` contract).
    let rc = unsafe {
        (entry.launch)(
            &raw,
            args.as_mut_ptr(),
            error.as_mut_ptr().cast::<c_char>(),
            error.len() as c_ulong,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let end = error.iter().position(|&b| b == 0).unwrap_or(error.len());
    Err(format!(
        "emulated kernel `{kernel}`: {}",
        String::from_utf8_lossy(&error[..end])
    ))
}

/// Names of every kernel the emulator can run (the kernels of kernels/cuda/*.cu and the
/// emulator's own self-test kernels, whose names start with `emu_selftest_`).
pub fn kernel_names() -> Vec<&'static str> {
    KERNELS.iter().map(|k| k.name).collect()
}

/// Sets how many OS threads run the blocks of a grid in parallel: `None` restores the default
/// (env `FLASHNECK_EMU_THREADS`, else the hardware's thread count). Results never depend on it.
pub fn set_worker_threads(threads: Option<u32>) {
    // SAFETY: stores a number into an atomic; any value is valid (0 means the default).
    unsafe { flashneck_emu_set_threads(threads.unwrap_or(0)) }
}

/// Whether the emulator was built with AddressSanitizer (`FLASHNECK_EMU_ASAN=1` at build time).
pub fn built_with_asan() -> bool {
    // SAFETY: a C function without parameters that returns a constant.
    unsafe { flashneck_emu_built_with_asan() != 0 }
}

/// The order in which the emulator resumes the ready threads of a block between two
/// synchronisation points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Increasing thread index (the default).
    Forward,
    /// Decreasing thread index: a kernel that reads shared memory another thread writes without a
    /// barrier in between gets a different result in one of the two orders.
    Reverse,
    /// Increasing index, and a warp whose collective (shuffle, ldmatrix, mma) completes runs on
    /// to its next barrier before later warps run: shows a missing barrier between warps even
    /// where each warp's first collective would otherwise keep all warps in lockstep.
    ForwardRunAhead,
    /// Decreasing index with run-ahead.
    ReverseRunAhead,
}

/// Runs `f` with every launch in this process under `schedule`, then restores the default (env
/// `FLASHNECK_EMU_SCHEDULE=reverse|run-ahead|reverse-run-ahead`, else forward), also when `f`
/// panics. The schedule is one setting for the whole process, so calls hold a lock: two tests
/// running in parallel threads cannot reset each other's schedule between its setting and its
/// launches. (Launches outside `with_schedule` meanwhile run under it too, which a correct
/// kernel does not notice: it gives the same results in every schedule.)
pub fn with_schedule<R>(schedule: Schedule, f: impl FnOnce() -> R) -> R {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    /// Restores the default schedule when dropped.
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            set_schedule(None);
        }
    }
    // A test that panicked inside `f` poisons the lock; the schedule is restored all the same.
    let _held = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    set_schedule(Some(schedule));
    let _restore = Restore;
    f()
}

fn set_schedule(schedule: Option<Schedule>) {
    let order = match schedule {
        None => -1,
        Some(Schedule::Forward) => 0,
        Some(Schedule::Reverse) => 1,
        Some(Schedule::ForwardRunAhead) => 2,
        Some(Schedule::ReverseRunAhead) => 3,
    };
    // SAFETY: stores a number into an atomic; every value is valid.
    unsafe { flashneck_emu_set_schedule(order) }
}
