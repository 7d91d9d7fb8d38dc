// Shared by every flashneck kernel: the host prepends this file to each shader's source, after
// a prelude that declares `elem`, the storage type of the op's tensors (src/shaders.rs):
// `f32` for f32 tensors and for f16 ones on adapters without SHADER_F16; `f16` (with
// `enable f16;`) for f16 tensors where the adapter has it. bf16 tensors are packed two per u32
// word. Kernels touch tensors only through the accessors src/shaders.rs appends (`x_ld(i)`,
// `out_st(i, v)`, ...): they compute in f32, and stores round to the op's element type first
// (`to_elem`, `bf16_bits`), so a device buffer only ever holds values of that type.

// Element type of the op's tensors, fixed per pipeline: 0 = f32, 1 = f16, 2 = bf16.
override DTYPE: u32 = 0u;

// Round to the nearest bf16 (ties to even), kept in an f32.
fn narrow_bf16(v: f32) -> f32 {
    let bits = bitcast<u32>(v);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        // NaN: keep it a (quiet) NaN after the low half is cut.
        return bitcast<f32>((bits & 0xffff0000u) | 0x00400000u);
    }
    return bitcast<f32>((bits + 0x7fffu + ((bits >> 16u) & 1u)) & 0xffff0000u);
}

// The bits of a bf16 (the nearest to v, ties to even; NaN kept), in the low half of a u32.
fn bf16_bits(v: f32) -> u32 {
    return bitcast<u32>(narrow_bf16(v)) >> 16u;
}

// Element i of a packed bf16 tensor, from its word (element 2w in the low half of word w).
fn bf16_half(word: u32, i: u32) -> f32 {
    return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u));
}

// Round to the nearest f16 (ties to even), kept in an f32: overflow to ±inf, subnormals on the
// 2^-24 grid.
fn narrow_f16(v: f32) -> f32 {
    let bits = bitcast<u32>(v);
    let sign = bits & 0x80000000u;
    let mag = bits & 0x7fffffffu;
    if (mag >= 0x7f800000u) {
        return v; // inf or NaN
    }
    if (mag >= 0x477ff000u) {
        return bitcast<f32>(sign | 0x7f800000u); // >= 65520 rounds to inf
    }
    if (mag >= 0x38800000u) {
        // Normal f16 (>= 2^-14): keep 10 mantissa bits.
        return bitcast<f32>(sign | ((mag + 0xfffu + ((mag >> 13u) & 1u)) & 0xffffe000u));
    }
    // Subnormal f16: a multiple of 2^-24; WGSL's round() breaks ties to even.
    let q = round(bitcast<f32>(mag) * 16777216.0) * (1.0 / 16777216.0);
    return bitcast<f32>(sign | bitcast<u32>(q));
}

// Round a value to the op's element type before it is stored.
fn narrow(v: f32) -> f32 {
    if (DTYPE == 1u) {
        return narrow_f16(v);
    }
    if (DTYPE == 2u) {
        return narrow_bf16(v);
    }
    return v;
}

// A value as stored in a tensor of the op: rounded to the op's element type (ties to even,
// overflow to ±inf, NaN kept), then converted to the storage type (exact after the rounding).
fn to_elem(v: f32) -> elem {
    return elem(narrow(v));
}

// The linear index of a workgroup in a 2-D grid (the host folds long 1-D grids into 2-D ones
// because a dimension holds at most 65535 workgroups).
fn flat_workgroup(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.y * nwg.x + wg.x;
}
