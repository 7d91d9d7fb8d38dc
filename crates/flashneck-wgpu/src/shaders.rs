//! The WGSL sources (`kernels/wgsl/*.wgsl`, embedded at build time) and their static checks.
//!
//! Every shader is built per [`Variant`]: a prelude with its `enable` directives and the storage
//! type of the op's tensors (`alias elem = f32;`, or `enable f16; alias elem = f16;`), then
//! `common.wgsl` (element narrowing, grid indexing), then the shared files its op needs
//! (`Shader::includes`: for GR-KAN and Gumbel, the row reductions of `reduce.wgsl`, or of
//! `reduce_subgroup.wgsl` in the subgroup variant), then the op's file, then the tensor
//! accessors (`accessors`). The op files declare each tensor binding `array<elem>` and touch
//! it only through its accessors: `x_ld(i)` loads element `i` as f32, `out_st(i, v)` rounds `v`
//! to the op's element type and stores it, `out_st2(i, v0, v1)` stores elements `i` and
//! `i + 1` (`i` even) that one thread owns, `out_stp` a pair of which the thread owns one or
//! both. Packed bf16 ([`Storage::Bf16`]) rewrites those bindings to `array<u32>` (read) and
//! `array<atomic<u32>>` (written), two elements per word.
//! [`validate`] runs naga's WGSL front end and validator on it, and [`workgroup_bytes`] sums the
//! sizes of its workgroup-memory globals, because neither naga nor lavapipe checks them against
//! `max_compute_workgroup_storage_size`; the backend refuses a shader that does not fit.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

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
    /// Not an op: the f32 FMA ceiling the bench measures (`ceiling.wgsl`).
    Ceiling,
}

/// How an op's tensors are stored on the device (the WGSL type of their bindings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Storage {
    /// A 32-bit word per element: f32 as is, fallback f16 widened to f32 (and `u32` tensors).
    F32,
    /// Native f16 (2 bytes per element); needs `SHADER_F16`.
    F16,
    /// bf16, which WGSL lacks, packed two per 32-bit word (element `2w` in the low half of word
    /// `w`, the host's little-endian bytes as they are). Needs nothing beyond core WGSL: loads
    /// shift the half into an f32's high bits; stores of a lone element go through two atomic
    /// ops on the word (clear the half, then set it), so neighbours written by other threads
    /// survive; a thread that owns both halves stores the word at once.
    Bf16,
}

impl Storage {
    pub const ALL: [Storage; 3] = [Storage::F32, Storage::F16, Storage::Bf16];

    /// Bytes per element on the device.
    pub const fn bytes(self) -> u64 {
        match self {
            Storage::F32 => 4,
            Storage::F16 | Storage::Bf16 => 2,
        }
    }

    /// The WGSL `elem` type: the element type of the tensor bindings (bf16 rewrites them to
    /// words, so its `elem` only types common.wgsl's unused `to_elem`).
    const fn wgsl(self) -> &'static str {
        match self {
            Storage::F32 | Storage::Bf16 => "f32",
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
    pub const ALL: [Variant; 6] = [
        Variant::new(Storage::F32, false),
        Variant::new(Storage::F16, false),
        Variant::new(Storage::Bf16, false),
        Variant::new(Storage::F32, true),
        Variant::new(Storage::F16, true),
        Variant::new(Storage::Bf16, true),
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
            Storage::F32 | Storage::Bf16 => "",
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
            Storage::Bf16 => "packed bf16 storage",
        })
    }
}

/// The WebGPU default of `max_compute_workgroup_storage_size`: what a portable shader fits in.
pub const WEBGPU_DEFAULT_WORKGROUP_STORAGE: u64 = 16384;

impl Shader {
    pub const ALL: [Shader; 5] = [
        Shader::GrKan,
        Shader::Gumbel,
        Shader::Attention,
        Shader::Topk,
        Shader::Ceiling,
    ];

    /// File stem under `kernels/wgsl/`.
    pub const fn name(self) -> &'static str {
        match self {
            Shader::GrKan => "grkan",
            Shader::Gumbel => "gumbel",
            Shader::Attention => "attention",
            Shader::Topk => "topk",
            Shader::Ceiling => "ceiling",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Shader::GrKan => include_str!("../../../kernels/wgsl/grkan.wgsl"),
            Shader::Gumbel => include_str!("../../../kernels/wgsl/gumbel.wgsl"),
            Shader::Attention => include_str!("../../../kernels/wgsl/attention.wgsl"),
            Shader::Topk => include_str!("../../../kernels/wgsl/topk.wgsl"),
            Shader::Ceiling => include_str!("../../../kernels/wgsl/ceiling.wgsl"),
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
            Shader::Ceiling => &[],
        }
    }

    /// The full source handed to the device for variant `v` (see [`Shader::variant`]): the
    /// prelude, `common.wgsl`, the shared files, the op's file (its tensor bindings retyped
    /// for packed bf16), the tensor accessors.
    pub fn source(self, v: Variant) -> String {
        let v = self.variant(v);
        let mut src = v.prelude();
        src.push_str(COMMON);
        for part in self.includes(v.subgroups) {
            src.push('\n');
            src.push_str(part);
        }
        src.push('\n');
        let tensors = tensor_bindings(self.body());
        if v.storage == Storage::Bf16 {
            let mut body = self.body().to_string();
            for t in &tensors {
                let word = if t.written {
                    "array<atomic<u32>>"
                } else {
                    "array<u32>"
                };
                body = body.replace(
                    &t.declaration(),
                    &t.declaration().replace("array<elem>", word),
                );
            }
            src.push_str(&body);
        } else {
            src.push_str(self.body());
        }
        src.push_str(&accessors(&tensors, v.storage));
        src
    }

    /// The names of the op's tensor bindings (`array<elem>`), in declaration order.
    pub fn tensors(self) -> Vec<&'static str> {
        tensor_bindings(self.body())
            .into_iter()
            .map(|t| t.name)
            .collect()
    }
}

/// A tensor binding of an op file: `var<storage, read> NAME: array<elem>;` (or `read_write`).
struct TensorBinding {
    name: &'static str,
    written: bool,
}

impl TensorBinding {
    /// The declaration as written in the op file (without its `@group @binding` attributes).
    fn declaration(&self) -> String {
        let access = if self.written { "read_write" } else { "read" };
        format!("var<storage, {access}> {}: array<elem>;", self.name)
    }
}

/// The tensor bindings declared in `body`.
fn tensor_bindings(body: &'static str) -> Vec<TensorBinding> {
    body.lines()
        .filter_map(|line| {
            let decl = line.trim().strip_suffix(": array<elem>;")?;
            let (access, name) = decl.split_once("var<storage, ")?.1.split_once("> ")?;
            Some(TensorBinding {
                name,
                written: access == "read_write",
            })
        })
        .collect()
}

/// The WGSL accessors of each tensor binding in `storage` (module-scope declarations may
/// follow their use). `NAME_ld(i) -> f32`; for written tensors also `NAME_st(i, v)`,
/// `NAME_st2(i, v0, v1)` (elements `i`, `i + 1`, `i` even, owned by this thread) and
/// `NAME_stp(i, first, second, v0, v1)` (the pair at even `i`, of which the thread owns the
/// elements flagged). Stores round to the op's element type first (`to_elem` / `bf16_bits`).
fn accessors(tensors: &[TensorBinding], storage: Storage) -> String {
    let mut out = String::from("\n// Tensor accessors, generated by src/shaders.rs.\n");
    for t in tensors {
        let n = t.name;
        let text = match (storage, t.written) {
            (Storage::F32 | Storage::F16, _) => {
                format!("fn {n}_ld(i: u32) -> f32 {{ return f32({n}[i]); }}\n")
            }
            (Storage::Bf16, false) => {
                format!("fn {n}_ld(i: u32) -> f32 {{ return bf16_half({n}[i >> 1u], i); }}\n")
            }
            (Storage::Bf16, true) => format!(
                "fn {n}_ld(i: u32) -> f32 {{ return bf16_half(atomicLoad(&{n}[i >> 1u]), i); }}\n"
            ),
        };
        out.push_str(&text);
        if !t.written {
            continue;
        }
        let stores = match storage {
            Storage::F32 | Storage::F16 => format!(
                "fn {n}_st(i: u32, v: f32) {{ {n}[i] = to_elem(v); }}\n\
                 fn {n}_st2(i: u32, v0: f32, v1: f32) {{\n    \
                     {n}[i] = to_elem(v0);\n    {n}[i + 1u] = to_elem(v1);\n}}\n"
            ),
            Storage::Bf16 => format!(
                "fn {n}_st(i: u32, v: f32) {{\n    \
                     let shift = (i & 1u) * 16u;\n    \
                     atomicAnd(&{n}[i >> 1u], ~(0xffffu << shift));\n    \
                     atomicOr(&{n}[i >> 1u], bf16_bits(v) << shift);\n}}\n\
                 fn {n}_st2(i: u32, v0: f32, v1: f32) {{\n    \
                     atomicStore(&{n}[i >> 1u], bf16_bits(v0) | (bf16_bits(v1) << 16u));\n}}\n"
            ),
        };
        out.push_str(&stores);
        out.push_str(&format!(
            "fn {n}_stp(i: u32, first: bool, second: bool, v0: f32, v1: f32) {{\n    \
                 if (first && second) {{\n        {n}_st2(i, v0, v1);\n    \
                 }} else if (first) {{\n        {n}_st(i, v0);\n    \
                 }} else if (second) {{\n        {n}_st(i + 1u, v1);\n    }}\n}}\n"
        ));
    }
    out
}

impl fmt::Display for Shader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parse and validate a shader built for variant `v` with naga (no device needed), with the
/// capabilities that variant needs. Errors carry naga's report.
pub fn validate(shader: Shader, v: Variant) -> Result<naga::Module, String> {
    Ok(validated(shader, v)?.0.clone())
}

/// A shader's module and naga's analysis of it.
type Validated = Arc<(naga::Module, naga::valid::ModuleInfo)>;

/// [`validate`]'s module with its analysis, parsed once per process for each (shader, variant):
/// every new pipeline and every backend's op check asks for one.
fn validated(shader: Shader, v: Variant) -> Result<Validated, String> {
    static CACHE: OnceLock<Mutex<HashMap<(Shader, Variant), Validated>>> = OnceLock::new();
    let v = shader.variant(v);
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(hit) = cache.lock().map_err(|e| e.to_string())?.get(&(shader, v)) {
        return Ok(hit.clone());
    }
    let src = shader.source(v);
    let module = naga::front::wgsl::parse_str(&src)
        .map_err(|e| format!("{shader}.wgsl ({v}): {}", e.emit_to_string(&src)))?;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), v.capabilities())
        .validate(&module)
        .map_err(|e| format!("{shader}.wgsl ({v}): {}", e.emit_to_string(&src)))?;
    let done = Arc::new((module, info));
    cache
        .lock()
        .map_err(|e| e.to_string())?
        .insert((shader, v), done.clone());
    Ok(done)
}

/// What one entry point of a shader needs from the device, once specialised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryResources {
    /// Bytes of workgroup memory (override-sized arrays at the pipeline's sizes).
    pub workgroup_bytes: u64,
    /// The storage buffer bindings (group 0) the entry point uses, ascending: a pipeline's
    /// layout holds these and no others, so an entry point counts against the adapter's
    /// `max_storage_buffers_per_shader_stage` only with what it touches.
    pub storage_bindings: Vec<u32>,
}

/// The resources of one entry point of `shader` (variant `v`) specialised with the pipeline's
/// override `constants`: naga keeps only what the entry point reaches, so override-sized
/// workgroup arrays (Gumbel's reductions, sized by its workgroup size `WG`) count at the size
/// the pipeline gives them, and bindings of other entry points do not count.
pub fn entry_resources(
    shader: Shader,
    v: Variant,
    entry: &str,
    constants: &[(&str, f64)],
) -> Result<EntryResources, String> {
    let validated = validated(shader, v)?;
    let (module, info) = &*validated;
    let mut values = naga::back::PipelineConstants::default();
    for &(name, value) in constants {
        values.insert(name.to_string(), value);
    }
    let (module, _) = naga::back::pipeline_constants::process_overrides(
        module,
        info,
        Some((naga::ShaderStage::Compute, entry)),
        &values,
    )
    .map_err(|e| format!("{shader}.wgsl ({v}) {entry} with {constants:?}: {e}"))?;
    let mut storage_bindings: Vec<u32> = module
        .global_variables
        .iter()
        .filter(|(_, g)| matches!(g.space, naga::AddressSpace::Storage { .. }))
        .filter_map(|(_, g)| g.binding.as_ref())
        .map(|b| b.binding)
        .collect();
    storage_bindings.sort_unstable();
    Ok(EntryResources {
        workgroup_bytes: workgroup_bytes(&module),
        storage_bindings,
    })
}

/// Bytes of workgroup memory of one entry point (see [`entry_resources`]).
pub fn entry_workgroup_bytes(
    shader: Shader,
    v: Variant,
    entry: &str,
    constants: &[(&str, f64)],
) -> Result<u64, String> {
    entry_resources(shader, v, entry, constants).map(|r| r.workgroup_bytes)
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

/// One field of a host parameter block: name, byte offset, WGSL scalar type.
#[cfg(test)]
pub(crate) type HostField = (&'static str, usize, &'static str);

/// The WGSL scalar type of a host field (`u32` or `f32`; anything else is a layout error).
#[cfg(test)]
pub(crate) fn scalar_of<S, T: 'static>(_field: impl Fn(&S) -> &T) -> &'static str {
    use std::any::TypeId;
    if TypeId::of::<T>() == TypeId::of::<u32>() {
        "u32"
    } else if TypeId::of::<T>() == TypeId::of::<f32>() {
        "f32"
    } else {
        "not a 32-bit scalar"
    }
}

/// The fields of a host parameter block, in declaration order: `host_fields!(Params; a, b)`.
#[cfg(test)]
macro_rules! host_fields {
    ($t:ty; $($f:ident),+ $(,)?) => {
        [$((
            stringify!($f),
            std::mem::offset_of!($t, $f),
            $crate::shaders::scalar_of(|p: &$t| &p.$f),
        )),+]
    };
}
#[cfg(test)]
pub(crate) use host_fields;

/// Checks that `shader`'s WGSL `Params` struct has exactly the host block's fields (same
/// names, order, offsets and scalar types) and its size, so that the uniform the host writes
/// is the one the shader reads.
#[cfg(test)]
pub(crate) fn check_params_layout(shader: Shader, host: &[HostField], host_size: usize) {
    let module = validate(shader, Variant::new(Storage::F32, false)).unwrap();
    let (members, span) = module
        .types
        .iter()
        .find_map(|(_, ty)| match (&ty.name, &ty.inner) {
            (Some(name), naga::TypeInner::Struct { members, span }) if name == "Params" => {
                Some((members, *span))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{shader}.wgsl declares no struct Params"));
    let wgsl: Vec<(&str, usize, &str)> = members
        .iter()
        .map(|m| {
            let name = m.name.as_deref().unwrap_or("?");
            let scalar = match module.types[m.ty].inner {
                naga::TypeInner::Scalar(naga::Scalar {
                    kind: naga::ScalarKind::Uint,
                    width: 4,
                }) => "u32",
                naga::TypeInner::Scalar(naga::Scalar {
                    kind: naga::ScalarKind::Float,
                    width: 4,
                }) => "f32",
                _ => "not a 32-bit scalar",
            };
            (name, m.offset as usize, scalar)
        })
        .collect();
    assert_eq!(
        wgsl, host,
        "{shader}.wgsl Params (left) vs the host's (right)"
    );
    assert_eq!(
        span as usize, host_size,
        "{shader}.wgsl Params size vs the host's"
    );
}
