//! The WGSL sources (`kernels/wgsl/*.wgsl`, embedded at build time) and their static checks.
//!
//! Every shader is `common.wgsl` (element narrowing, grid indexing), then the shared files its
//! op needs ([`Shader::includes`]), then the op's file.
//! [`validate`] runs naga's WGSL front end and validator on it, and [`workgroup_bytes`] sums the
//! sizes of its workgroup-memory globals, because neither naga nor lavapipe checks them against
//! `max_compute_workgroup_storage_size`; the backend refuses a shader that does not fit.

use std::fmt;

const COMMON: &str = include_str!("../../../kernels/wgsl/common.wgsl");
/// Workgroup tree reductions (`red`, `reduce_sum`, `reduce_max`) sized by the op's `WG`.
const REDUCE: &str = include_str!("../../../kernels/wgsl/reduce.wgsl");
/// The attention uniform (`Params`, `p`), `BLOCK`, `visible_keys` and `kv_head`.
const ATTENTION_COMMON: &str = include_str!("../../../kernels/wgsl/attention_common.wgsl");

/// One WGSL shader module (several entry points each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shader {
    GrKan,
    Gumbel,
    Attention,
    Topk,
}

/// The WebGPU default of `max_compute_workgroup_storage_size`: what a portable shader fits in.
pub const WEBGPU_DEFAULT_WORKGROUP_STORAGE: u64 = 16384;

impl Shader {
    pub const ALL: [Shader; 4] = [
        Shader::GrKan,
        Shader::Gumbel,
        Shader::Attention,
        Shader::Topk,
    ];

    /// File stem under `kernels/wgsl/`.
    pub const fn name(self) -> &'static str {
        match self {
            Shader::GrKan => "grkan",
            Shader::Gumbel => "gumbel",
            Shader::Attention => "attention",
            Shader::Topk => "topk",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Shader::GrKan => include_str!("../../../kernels/wgsl/grkan.wgsl"),
            Shader::Gumbel => include_str!("../../../kernels/wgsl/gumbel.wgsl"),
            Shader::Attention => include_str!("../../../kernels/wgsl/attention.wgsl"),
            Shader::Topk => include_str!("../../../kernels/wgsl/topk.wgsl"),
        }
    }

    /// Shared WGSL files placed between `common.wgsl` and the op's file.
    fn includes(self) -> &'static [&'static str] {
        match self {
            Shader::GrKan | Shader::Gumbel => &[REDUCE],
            Shader::Attention | Shader::Topk => &[ATTENTION_COMMON],
        }
    }

    /// The full source handed to the device: `common.wgsl`, the shared files, the op's file.
    pub fn source(self) -> String {
        let mut src = String::from(COMMON);
        for part in self.includes() {
            src.push('\n');
            src.push_str(part);
        }
        src.push('\n');
        src.push_str(self.body());
        src
    }
}

impl fmt::Display for Shader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parse and validate a shader with naga (no device needed). Errors carry naga's report.
pub fn validate(shader: Shader) -> Result<naga::Module, String> {
    let src = shader.source();
    let module = naga::front::wgsl::parse_str(&src)
        .map_err(|e| format!("{shader}.wgsl: {}", e.emit_to_string(&src)))?;
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    )
    .validate(&module)
    .map_err(|e| format!("{shader}.wgsl: {}", e.emit_to_string(&src)))?;
    Ok(module)
}

/// Bytes of workgroup memory the module declares (all its `var<workgroup>` globals: an upper
/// bound for each entry point).
pub fn workgroup_bytes(module: &naga::Module) -> u64 {
    module
        .global_variables
        .iter()
        .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
        .map(|(_, g)| u64::from(module.types[g.ty].inner.size(module.to_ctx())))
        .sum()
}
