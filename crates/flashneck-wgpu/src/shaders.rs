//! The WGSL sources (`kernels/wgsl/*.wgsl`, embedded at build time) and their static checks.
//!
//! Every shader is built per [`Variant`]: a prelude with its `enable` directives and the storage
//! type of the op's tensors (`alias elem = f32;`, or `enable f16; alias elem = f16;`), then
//! `common.wgsl` (element narrowing, grid indexing), then the shared files its op needs
//! ([`Shader::includes`]: for GR-KAN and Gumbel, the row reductions of `reduce.wgsl`, or of
//! `reduce_subgroup.wgsl` in the subgroup variant), then the op's file. Tensor bindings are
//! `array<elem>`: kernels load `f32(x[i])`, compute in f32 and store `to_elem(v)`.
//! [`validate`] runs naga's WGSL front end and validator on it, and [`workgroup_bytes`] sums the
//! sizes of its workgroup-memory globals, because neither naga nor lavapipe checks them against
//! `max_compute_workgroup_storage_size`; the backend refuses a shader that does not fit.

use std::fmt;

const COMMON: &str = include_str!("../../../kernels/wgsl/common.wgsl");
/// Workgroup tree reductions (`Lane`, `red`, `reduce_sum`, `reduce_max`) sized by the op's `WG`.
const REDUCE: &str = include_str!("../../../kernels/wgsl/reduce.wgsl");
/// The same interface with subgroup operations (needs `SUBGROUP`).
const REDUCE_SUBGROUP: &str = include_str!("../../../kernels/wgsl/reduce_subgroup.wgsl");
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

/// How an op's tensors are stored on the device (the WGSL `elem` type of their bindings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Storage {
    /// A 32-bit word per element: f32 as is, f16 and bf16 widened to f32 (and `u32` tensors).
    F32,
    /// Native f16 (2 bytes per element); needs `SHADER_F16`.
    F16,
}

impl Storage {
    pub const ALL: [Storage; 2] = [Storage::F32, Storage::F16];

    /// Bytes per element on the device.
    pub const fn bytes(self) -> u64 {
        match self {
            Storage::F32 => 4,
            Storage::F16 => 2,
        }
    }

    /// The WGSL type of a tensor element in this storage.
    const fn wgsl(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::F16 => "f16",
        }
    }
}

/// Which build of a shader: how the op's tensors are stored, and whether its row reductions
/// use subgroup operations (only GR-KAN and Gumbel have any; [`Shader::variant`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Variant {
    pub storage: Storage,
    pub subgroups: bool,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::new(Storage::F32, false),
        Variant::new(Storage::F16, false),
        Variant::new(Storage::F32, true),
        Variant::new(Storage::F16, true),
    ];

    pub const fn new(storage: Storage, subgroups: bool) -> Self {
        Variant { storage, subgroups }
    }

    /// The first lines of the shader: `enable` directives (which must come first), then `elem`.
    /// Subgroups need no directive: naga 30 gates them by capability and does not accept the
    /// WGSL `enable subgroups;` yet (wgpu requires the `SUBGROUP` feature instead).
    fn prelude(self) -> String {
        let enable = match self.storage {
            Storage::F16 => "enable f16;\n",
            Storage::F32 => "",
        };
        format!("{enable}alias elem = {};\n", self.storage.wgsl())
    }

    /// The naga capabilities a shader built for this variant needs.
    pub fn capabilities(self) -> naga::valid::Capabilities {
        use naga::valid::Capabilities as C;
        let mut c = C::default();
        if self.storage == Storage::F16 {
            c |= C::SHADER_FLOAT16;
        }
        if self.subgroups {
            c |= C::SUBGROUP;
        }
        c
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.storage)?;
        if self.subgroups {
            f.write_str(", subgroups")?;
        }
        Ok(())
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Storage::F32 => "f32 storage",
            Storage::F16 => "f16 storage",
        })
    }
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

    /// Whether the shader has row reductions (which have a subgroup variant).
    pub const fn has_reductions(self) -> bool {
        matches!(self, Shader::GrKan | Shader::Gumbel)
    }

    /// The variant actually built for `v`: subgroups only where the shader has reductions,
    /// so the others are not built (nor cached) twice.
    pub const fn variant(self, v: Variant) -> Variant {
        Variant::new(v.storage, v.subgroups && self.has_reductions())
    }

    /// Shared WGSL files placed between `common.wgsl` and the op's file.
    fn includes(self, subgroups: bool) -> &'static [&'static str] {
        match self {
            Shader::GrKan | Shader::Gumbel if subgroups => &[REDUCE_SUBGROUP],
            Shader::GrKan | Shader::Gumbel => &[REDUCE],
            Shader::Attention | Shader::Topk => &[ATTENTION_COMMON],
        }
    }

    /// The full source handed to the device for variant `v` (see [`Shader::variant`]): the
    /// prelude, `common.wgsl`, the shared files, the op's file.
    pub fn source(self, v: Variant) -> String {
        let v = self.variant(v);
        let mut src = v.prelude();
        src.push_str(COMMON);
        for part in self.includes(v.subgroups) {
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

/// Parse and validate a shader built for variant `v` with naga (no device needed), with the
/// capabilities that variant needs. Errors carry naga's report.
pub fn validate(shader: Shader, v: Variant) -> Result<naga::Module, String> {
    let v = shader.variant(v);
    let src = shader.source(v);
    let module = naga::front::wgsl::parse_str(&src)
        .map_err(|e| format!("{shader}.wgsl ({v}): {}", e.emit_to_string(&src)))?;
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), v.capabilities())
        .validate(&module)
        .map_err(|e| format!("{shader}.wgsl ({v}): {}", e.emit_to_string(&src)))?;
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
