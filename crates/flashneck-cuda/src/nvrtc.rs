//! NVRTC, loaded at run time: compiles one `.cu` source (with `common.cuh` as a named header) to
//! PTX or to a cubin for one exact architecture, and returns NVRTC's log with it.
//!
//! Used by the backend (one cubin per source per device) and by `cargo xtask kernels` (every
//! source for `compute_80`/`compute_90` PTX and `sm_80`/`sm_90` cubins with ptxas's verbose
//! report in the log).

use cudarc::nvrtc::sys;
use std::ffi::{CStr, CString, c_char, c_int};

/// What one compilation produced.
pub struct Compiled {
    /// The PTX text (for a `compute_XY` target) or the cubin (for an `sm_XY` target).
    pub image: Vec<u8>,
    /// NVRTC's log (warnings; with `--ptxas-options=-v`, ptxas's per-kernel report).
    pub log: String,
}

/// The source of every header the kernels include, by include name.
pub const HEADERS: &[(&str, &str)] = &[(
    "common.cuh",
    include_str!("../../../kernels/cuda/common.cuh"),
)];

/// NVRTC's options besides the architecture and the caller's extras.
pub const OPTIONS: &[&str] = &[
    "--std=c++17",
    "--device-as-default-execution-space",
    "-lineinfo",
];

/// Whether libnvrtc can be loaded (cudarc panics on first use otherwise).
pub fn present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names; no symbol is used.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's version, e.g. `(13, 0)`.
pub fn version() -> Result<(i32, i32), String> {
    if !present() {
        return Err(missing());
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers.
    check(unsafe { sys::nvrtcVersion(&mut major, &mut minor) })?;
    Ok((major, minor))
}

fn missing() -> String {
    "libnvrtc (CUDA 13) not found: add its folder (e.g. python's nvidia/cu13/lib or \
     /usr/local/cuda/lib64) to LD_LIBRARY_PATH"
        .to_string()
}

fn check(r: sys::nvrtcResult) -> Result<(), String> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string.
        let s = unsafe { CStr::from_ptr(sys::nvrtcGetErrorString(r)) };
        Err(s.to_string_lossy().into_owned())
    }
}

/// An NVRTC program, destroyed on drop.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the handle came from nvrtcCreateProgram and is destroyed once.
        unsafe {
            sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

impl Program {
    fn log(&self) -> String {
        let mut n = 0usize;
        // SAFETY: valid program and out-pointer.
        if unsafe { sys::nvrtcGetProgramLogSize(self.0, &mut n) } != sys::nvrtcResult::NVRTC_SUCCESS
        {
            return String::new();
        }
        let mut buf = vec![0u8; n.max(1)];
        // SAFETY: `buf` holds the `n` bytes NVRTC said the log needs.
        unsafe { sys::nvrtcGetProgramLog(self.0, buf.as_mut_ptr() as *mut c_char) };
        String::from_utf8_lossy(&buf)
            .trim_end_matches('\0')
            .trim()
            .to_string()
    }
}

/// Compile `source` (named `name` in messages) for `arch`: `compute_XY` gives PTX, `sm_XY` a
/// cubin. `extra` options are appended (e.g. `--ptxas-options=-v`). On failure the error holds
/// NVRTC's log. The headers are the embedded [`HEADERS`].
pub fn compile(source: &str, name: &str, arch: &str, extra: &[&str]) -> Result<Compiled, String> {
    compile_with_headers(source, name, arch, extra, HEADERS)
}

/// [`compile`] with the given `(include name, source)` headers (the kernel check reads them from
/// disk).
pub fn compile_with_headers(
    source: &str,
    name: &str,
    arch: &str,
    extra: &[&str],
    headers: &[(&str, &str)],
) -> Result<Compiled, String> {
    if !present() {
        return Err(missing());
    }
    let c_src = CString::new(source).map_err(|_| format!("{name}: source holds a NUL byte"))?;
    let c_name = CString::new(name).map_err(|_| format!("{name}: name holds a NUL byte"))?;
    let to_c = |s: &str| CString::new(s).map_err(|_| format!("{name}: a header holds a NUL byte"));
    let h_src = headers
        .iter()
        .map(|(_, s)| to_c(s))
        .collect::<Result<Vec<_>, _>>()?;
    let h_name = headers
        .iter()
        .map(|(n, _)| to_c(n))
        .collect::<Result<Vec<_>, _>>()?;
    let h_src_p: Vec<*const c_char> = h_src.iter().map(|s| s.as_ptr()).collect();
    let h_name_p: Vec<*const c_char> = h_name.iter().map(|s| s.as_ptr()).collect();

    let mut prog = Program(std::ptr::null_mut());
    // SAFETY: every pointer refers to a NUL-terminated string alive for this call; the arrays
    // hold `headers.len()` entries each.
    check(unsafe {
        sys::nvrtcCreateProgram(
            &mut prog.0,
            c_src.as_ptr(),
            c_name.as_ptr(),
            headers.len() as c_int,
            h_src_p.as_ptr(),
            h_name_p.as_ptr(),
        )
    })
    .map_err(|e| format!("{name}: nvrtcCreateProgram: {e}"))?;

    let mut opts: Vec<String> = vec![format!("--gpu-architecture={arch}")];
    opts.extend(OPTIONS.iter().map(|s| s.to_string()));
    opts.extend(extra.iter().map(|s| s.to_string()));
    let c_opts = opts
        .iter()
        .map(|o| to_c(o))
        .collect::<Result<Vec<_>, _>>()?;
    let c_opts_p: Vec<*const c_char> = c_opts.iter().map(|s| s.as_ptr()).collect();
    // SAFETY: `c_opts_p` holds `len` valid C strings alive for the call.
    let r = unsafe { sys::nvrtcCompileProgram(prog.0, c_opts_p.len() as c_int, c_opts_p.as_ptr()) };
    let log = prog.log();
    check(r).map_err(|e| format!("{name} ({arch}): NVRTC failed ({e}):\n{log}"))?;

    let cubin = arch.starts_with("sm_");
    let mut n = 0usize;
    // SAFETY: valid program and out-pointer.
    check(unsafe {
        if cubin {
            sys::nvrtcGetCUBINSize(prog.0, &mut n)
        } else {
            sys::nvrtcGetPTXSize(prog.0, &mut n)
        }
    })
    .map_err(|e| format!("{name} ({arch}): size query: {e}"))?;
    let mut image = vec![0u8; n];
    // SAFETY: `image` holds the `n` bytes NVRTC asked for.
    check(unsafe {
        if cubin {
            sys::nvrtcGetCUBIN(prog.0, image.as_mut_ptr() as *mut c_char)
        } else {
            sys::nvrtcGetPTX(prog.0, image.as_mut_ptr() as *mut c_char)
        }
    })
    .map_err(|e| format!("{name} ({arch}): image query: {e}"))?;
    Ok(Compiled { image, log })
}
