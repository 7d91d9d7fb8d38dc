//! The one launch interface: a [`Device`] is a real GPU (cudarc) or the CPU emulator, and the
//! host code of every op (grid, block, shared memory, arguments) drives both through
//! [`Device::launch`], so the launch arithmetic is tested under emulation too.
//!
//! Modules: each `.cu` source is compiled by NVRTC at most once per process and device, to a
//! cubin for the device's exact architecture (`sm_XY` from its compute capability: the driver
//! refuses PTX newer than itself, a cubin it takes as is), on first use of one of its kernels;
//! with [`CUBIN_DIR_VAR`] set, at most once per folder of cubins, shared between processes.

use crate::kernels;
use crate::nvrtc;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, sys};
use flashneck_core::{Error, Result};
use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Set to 1, the real device waits for every launch and names the kernel in the error of a
/// fault (without it a fault shows at the next synchronisation, unnamed, and fails every later
/// call of the process). The GPU check sets it for its tests; benches leave it unset.
pub const SYNC_VAR: &str = "FLASHNECK_CUDA_SYNC";

fn sync_each_launch() -> bool {
    static SYNC: OnceLock<bool> = OnceLock::new();
    *SYNC.get_or_init(|| std::env::var(SYNC_VAR).is_ok_and(|v| v == "1"))
}

/// Dynamic shared memory a kernel may use without opting in (CUDA's default limit).
const DEFAULT_SHARED_LIMIT: u32 = 48 * 1024;

/// Backend names used in errors and in `info()`.
pub const REAL: &str = "cuda";
pub const EMULATED: &str = "cuda-emu";

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A 1-D grid of `blocks` blocks of `threads` threads, no dynamic shared memory.
    pub fn linear(blocks: u32, threads: u32) -> Self {
        LaunchConfig {
            grid: [blocks, 1, 1],
            block: [threads, 1, 1],
            shared_bytes: 0,
        }
    }
}

/// One kernel argument, of exactly the kernel parameter's C type.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// A device pointer (a host address under emulation); 0 for a null pointer.
    Ptr(u64),
    I32(i32),
    U64(u64),
    F32(f32),
}

/// A real device: its context, its one stream, and the modules compiled for it.
pub struct RealDevice {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// `sm_XY` of the device.
    pub arch: String,
    pub name: String,
    /// Loaded modules by index into [`kernels::SOURCES`].
    modules: Mutex<HashMap<usize, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    /// Dynamic shared memory each kernel has been opted into past the default 48 KiB, so that
    /// the driver call is made once per kernel and size, not on every launch.
    shared_opt_in: Mutex<HashMap<String, u32>>,
}

/// Where kernels run.
pub enum Device {
    /// Shared by every backend on the same ordinal in this process (one context, one stream,
    /// one set of loaded modules).
    Real(Arc<RealDevice>),
    Emulated,
}

fn driver_error(e: impl std::fmt::Debug) -> Error {
    Error::device(REAL, format!("{e:?}"))
}

/// Cubins compiled in this process, by (source index, arch): NVRTC runs once per source and
/// architecture, however many backends are created.
type CubinCache = Mutex<HashMap<(usize, String), Arc<Vec<u8>>>>;

fn cubin_cache() -> &'static CubinCache {
    static CACHE: OnceLock<CubinCache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn cubin_for(source: usize, arch: &str) -> Result<Arc<Vec<u8>>> {
    let dir = std::env::var_os(CUBIN_DIR_VAR).map(PathBuf::from);
    cubin_in(dir.as_deref(), source, arch)
}

/// [`cubin_for`] with the folder of shared cubins `dir`, if any.
fn cubin_in(dir: Option<&Path>, source: usize, arch: &str) -> Result<Arc<Vec<u8>>> {
    let mut cache = cubin_cache()
        .lock()
        .map_err(|_| Error::device(REAL, "the cubin cache lock is poisoned"))?;
    if let Some(c) = cache.get(&(source, arch.to_string())) {
        return Ok(c.clone());
    }
    let file = dir.map(|d| d.join(cubin_file_name(source, arch)));
    let image = match file.as_ref().and_then(|f| std::fs::read(f).ok()) {
        Some(image) => image,
        None => {
            let image = compile_cubin(source, arch)?;
            if let Some(f) = &file {
                // A cache only: a folder that cannot be written costs a compile per process.
                let _ = write_atomically(f, &image);
            }
            image
        }
    };
    let c = Arc::new(image);
    cache.insert((source, arch.to_string()), c.clone());
    Ok(c)
}

/// The environment variable naming a folder of compiled cubins shared between processes: read
/// before NVRTC runs, written after. The GPU check sets it to the bundle's `cubins/`, which
/// `cargo xtask gpu-bundle` fills ahead of time ([`write_cubins`]), so that none of its
/// processes spends NVRTC's ~13 s on the kernels.
pub const CUBIN_DIR_VAR: &str = "FLASHNECK_CUBIN_DIR";

fn compile_cubin(source: usize, arch: &str) -> Result<Vec<u8>> {
    let (name, src) = kernels::SOURCES[source];
    nvrtc::compile(src, name, arch, &[])
        .map(|c| c.image)
        .map_err(|log| Error::device(REAL, log))
}

/// The cache file of source `source`'s cubin for `arch`: its stem, the arch, and a hash of
/// everything the cubin is compiled from (the source, the headers, NVRTC's options), so that a
/// stale file is never picked.
pub fn cubin_file_name(source: usize, arch: &str) -> String {
    let (name, src) = kernels::SOURCES[source];
    // FNV-1a, 64 bits: stable across builds and platforms (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes.iter().chain([0xffu8].iter()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(src.as_bytes());
    for (n, hdr) in nvrtc::HEADERS {
        eat(n.as_bytes());
        eat(hdr.as_bytes());
    }
    eat(nvrtc::OPTIONS.join(" ").as_bytes());
    eat(arch.as_bytes());
    let stem = name.strip_suffix(".cu").unwrap_or(name);
    format!("{stem}-{arch}-{h:016x}.cubin")
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Compile every kernel source for `arch` (e.g. `sm_90`) into `dir`, under the names the
/// backend looks for when [`CUBIN_DIR_VAR`] names `dir`. Needs NVRTC, not a device. Returns the
/// files written.
pub fn write_cubins(dir: &Path, arch: &str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::device(REAL, format!("{}: {e}", dir.display())))?;
    (0..kernels::SOURCES.len())
        .map(|source| {
            let path = dir.join(cubin_file_name(source, arch));
            write_atomically(&path, &compile_cubin(source, arch)?)
                .map_err(|e| Error::device(REAL, format!("{}: {e}", path.display())))?;
            Ok(path)
        })
        .collect()
}

/// Whether libcuda can be loaded (cudarc panics on first use otherwise).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    unsafe { sys::is_culib_present() }
}

impl RealDevice {
    /// Device `ordinal`, opened on first use and shared afterwards. Errors (never panics)
    /// without a driver or device.
    pub fn get(ordinal: usize) -> Result<Arc<Self>> {
        static OPEN: OnceLock<Mutex<HashMap<usize, Arc<RealDevice>>>> = OnceLock::new();
        let mut open = OPEN
            .get_or_init(|| Mutex::new(HashMap::new()))
            .lock()
            .map_err(|_| Error::device(REAL, "the device table lock is poisoned"))?;
        if let Some(d) = open.get(&ordinal) {
            return Ok(d.clone());
        }
        let d = Arc::new(Self::open(ordinal)?);
        open.insert(ordinal, d.clone());
        Ok(d)
    }

    fn open(ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(Error::device(
                REAL,
                "no CUDA driver (libcuda) on this machine",
            ));
        }
        let count = CudaContext::device_count().map_err(driver_error)?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::device(
                REAL,
                format!("device {ordinal} requested, {count} present"),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_error)?;
        // One stream and raw launches: cudarc's per-buffer event tracking is not needed.
        // SAFETY: called before any buffer or stream of this context exists.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx.compute_capability().map_err(driver_error)?;
        let name = ctx.name().map_err(driver_error)?;
        let stream = ctx.default_stream();
        Ok(RealDevice {
            ctx,
            stream,
            arch: format!("sm_{major}{minor}"),
            name,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            shared_opt_in: Mutex::new(HashMap::new()),
        })
    }

    /// Let `kernel` (loaded as `f`) take `bytes` of dynamic shared memory, past the 48 KiB a
    /// kernel gets without asking; the driver is asked once per kernel and larger size.
    fn opt_in_shared(&self, kernel: &str, f: &CudaFunction, bytes: u32) -> Result<()> {
        let mut opted = self
            .shared_opt_in
            .lock()
            .map_err(|_| Error::device(REAL, "the shared-memory table lock is poisoned"))?;
        if opted.get(kernel).is_some_and(|&b| b >= bytes) {
            return Ok(());
        }
        f.set_attribute(
            sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(|e| {
            Error::device(
                REAL,
                format!("{kernel}: {bytes} bytes of shared memory: {e:?}"),
            )
        })?;
        opted.insert(kernel.to_string(), bytes);
        Ok(())
    }

    fn function(&self, kernel: &str) -> Result<CudaFunction> {
        fn lock_err<G>(_: G) -> Error {
            Error::device(REAL, "a module lock is poisoned")
        }
        if let Some(f) = self.functions.lock().map_err(lock_err)?.get(kernel) {
            return Ok(f.clone());
        }
        let source = kernels::source_of(kernel)
            .ok_or_else(|| Error::device(REAL, format!("no source exports kernel `{kernel}`")))?;
        let module = {
            let mut modules = self.modules.lock().map_err(lock_err)?;
            match modules.get(&source) {
                Some(m) => m.clone(),
                None => {
                    let cubin = cubin_for(source, &self.arch)?;
                    let m = self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_binary(cubin.to_vec()))
                        .map_err(|e| {
                            let file = kernels::SOURCES[source].0;
                            Error::device(
                                REAL,
                                format!("loading {file}'s {} cubin: {e:?}", self.arch),
                            )
                        })?;
                    modules.insert(source, m.clone());
                    m
                }
            }
        };
        let f = module.load_function(kernel).map_err(driver_error)?;
        self.functions
            .lock()
            .map_err(lock_err)?
            .insert(kernel.to_string(), f.clone());
        Ok(f)
    }
}

impl Device {
    /// The backend name for errors.
    pub fn backend(&self) -> &'static str {
        match self {
            Device::Real(_) => REAL,
            Device::Emulated => EMULATED,
        }
    }

    /// Launch `kernel` over `cfg` with `args` (in the kernel's parameter order). Real devices
    /// queue the launch on the stream; the emulator runs it to completion.
    ///
    /// # Safety
    ///
    /// The kernel dereferences the raw addresses in `args` without any check, so the caller
    /// guarantees that `args` matches the kernel's parameter list (count and C types), and that
    /// every [`Arg::Ptr`] is 0 (only where the kernel never dereferences it) or the address of a
    /// live buffer of this device ([`crate::CudaBuffer::addr`]) holding at least the elements the
    /// kernel reads or writes for the given sizes and `cfg`, and staying alive until the work
    /// completes (in stream order on a real device). Buffers the kernel writes must not be
    /// aliased by buffers it reads unless the kernel allows it.
    pub(crate) unsafe fn launch(
        &self,
        kernel: &str,
        cfg: &LaunchConfig,
        args: &[Arg],
    ) -> Result<()> {
        if cfg.grid.contains(&0) || cfg.block.contains(&0) {
            return Err(Error::device(
                self.backend(),
                format!("{kernel}: empty launch {cfg:?}"),
            ));
        }
        // cuLaunchKernel's convention: entry i points at the value of argument i.
        let mut values: Vec<Arg> = args.to_vec();
        let mut ptrs: Vec<*mut c_void> = values
            .iter_mut()
            .map(|a| match a {
                Arg::Ptr(v) | Arg::U64(v) => v as *mut u64 as *mut c_void,
                Arg::I32(v) => v as *mut i32 as *mut c_void,
                Arg::F32(v) => v as *mut f32 as *mut c_void,
            })
            .collect();
        match self {
            Device::Emulated => {
                let c = crate::emu::EmuLaunchConfig {
                    grid: cfg.grid,
                    block: cfg.block,
                    shared_bytes: cfg.shared_bytes,
                };
                // SAFETY: `ptrs` holds one pointer per kernel parameter, each to a value of the
                // parameter's type living in `values` until the call returns; the device pointers
                // among them meet this function's contract (host buffers under emulation).
                unsafe { crate::emu::launch(kernel, &c, &mut ptrs) }
                    .map_err(|e| Error::device(EMULATED, format!("{kernel}: {e}")))
            }
            Device::Real(d) => {
                let f = d.function(kernel)?;
                // Raw driver calls use the calling thread's current context.
                d.ctx.bind_to_thread().map_err(driver_error)?;
                // Past 48 KiB a kernel's dynamic shared memory must be opted into (the emulator
                // takes up to the 227 KiB an sm_90 block may have either way).
                if cfg.shared_bytes > DEFAULT_SHARED_LIMIT {
                    d.opt_in_shared(kernel, &f, cfg.shared_bytes)?;
                }
                // SAFETY: `ptrs` holds one pointer per kernel parameter, each to a value of the
                // parameter's type that lives until the call returns (the driver copies them);
                // the device pointers among them meet this function's contract.
                unsafe {
                    cudarc::driver::result::launch_kernel(
                        f.cu_function(),
                        (cfg.grid[0], cfg.grid[1], cfg.grid[2]),
                        (cfg.block[0], cfg.block[1], cfg.block[2]),
                        cfg.shared_bytes,
                        d.stream.cu_stream(),
                        &mut ptrs,
                    )
                }
                .map_err(|e| Error::device(REAL, format!("{kernel}: launch failed: {e:?}")))?;
                if sync_each_launch() {
                    d.stream.synchronize().map_err(|e| {
                        Error::device(
                            REAL,
                            format!("{kernel} {cfg:?} failed on the device: {e:?}"),
                        )
                    })?;
                }
                Ok(())
            }
        }
    }

    /// Wait for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Emulated => Ok(()),
            Device::Real(d) => d.stream.synchronize().map_err(driver_error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the target directory's temp space.
    fn scratch_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flashneck-cubins-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn cubin_file_names_differ_by_source_and_arch() {
        let names: Vec<String> = (0..kernels::SOURCES.len())
            .flat_map(|s| ["sm_80", "sm_90"].map(|a| cubin_file_name(s, a)))
            .collect();
        for (i, a) in names.iter().enumerate() {
            assert!(a.ends_with(".cubin"), "{a}");
            assert!(names[i + 1..].iter().all(|b| b != a), "{a} twice");
        }
        assert!(cubin_file_name(0, "sm_90").starts_with("grkan-sm_90-"));
    }

    /// With a folder, a cubin already there is used as is: no NVRTC (the arch is one NVRTC
    /// does not know, so a compile would fail).
    #[test]
    fn a_cubin_in_the_folder_is_read_not_compiled() {
        let dir = scratch_dir("read");
        let file = dir.join(cubin_file_name(1, "sm_00"));
        std::fs::write(&file, b"not really a cubin").unwrap();
        let got = cubin_in(Some(&dir), 1, "sm_00").unwrap();
        assert_eq!(got.as_slice(), b"not really a cubin");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `write_cubins` fills a folder with ELF cubins under the names the backend looks for
    /// (needs NVRTC 13; says so and returns where there is none).
    #[test]
    fn write_cubins_names_every_source() {
        if !nvrtc::present() {
            println!("skipped: no libnvrtc (CUDA 13) on this machine");
            return;
        }
        let dir = scratch_dir("write");
        let files = write_cubins(&dir, "sm_90").unwrap();
        assert_eq!(files.len(), kernels::SOURCES.len());
        for (source, f) in files.iter().enumerate() {
            assert_eq!(f, &dir.join(cubin_file_name(source, "sm_90")));
            let bytes = std::fs::read(f).unwrap();
            assert_eq!(&bytes[..4], b"\x7fELF", "{}", f.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
