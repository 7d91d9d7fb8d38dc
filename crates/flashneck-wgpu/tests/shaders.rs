//! Static checks of every WGSL shader, with no device: naga parses and validates each one in
//! every variant (`elem = f32`, and `elem = f16` with naga's SHADER_FLOAT16 capability; the
//! row reductions with and without subgroup operations, the latter with the SUBGROUP
//! capability), and its workgroup memory fits WebGPU's default limit (16384 bytes), which
//! neither naga nor lavapipe enforces. `tests/direct.rs` checks the same against a real
//! adapter's limit.

use flashneck_wgpu::shaders::{
    Shader, Storage, Variant, WEBGPU_DEFAULT_WORKGROUP_STORAGE, entry_resources,
    entry_workgroup_bytes, validate,
};

const PLAIN: Variant = Variant::new(Storage::F32, false);

/// Whether naga refuses `src` without any capability (so the validation that passed it used
/// the variant's capabilities).
fn refused_without_capabilities(src: &str) -> bool {
    let module = naga::front::wgsl::parse_str(src).unwrap();
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    )
    .validate(&module)
    .is_err()
}

#[test]
fn every_shader_passes_naga_validation_in_every_variant() {
    for v in Variant::ALL {
        for s in Shader::ALL {
            if let Err(e) = validate(s, v) {
                panic!("{e}");
            }
        }
    }
}

#[test]
fn subgroup_variant_uses_subgroup_operations() {
    // Only the shaders with reductions have a subgroup build, and it really calls subgroup
    // operations (a variant that silently kept the workgroup tree would test nothing new).
    for s in Shader::ALL {
        let v = s.variant(Variant::new(Storage::F32, true));
        assert_eq!(v.subgroups, s.has_reductions(), "{s}");
        let src = s.source(Variant::new(Storage::F32, true));
        assert_eq!(src.contains("subgroupAdd("), s.has_reductions(), "{s}");
        assert!(!s.source(PLAIN).contains("subgroupAdd("), "{s}");
        if s.has_reductions() {
            // Without the capability naga refuses it: the validation above used it.
            assert!(refused_without_capabilities(&src), "{s}");
        }
    }
}

#[test]
fn f16_storage_declares_f16_tensors() {
    // Exactly the op's tensors are `array<elem>` (f16 in this variant); statistics, layouts,
    // coefficients and scratch stay f32 / u32. A binding left `array<f32>` would read an f16
    // buffer as f32 words.
    for (s, tensors) in [
        (Shader::GrKan, &["x", "dy", "out"][..]),
        (Shader::Gumbel, &["logits", "out", "dy"]),
        (
            Shader::Attention,
            &[
                "q", "k", "v", "o_out", "residual", "o_in", "d_o", "dq", "dk", "dv",
            ],
        ),
        (Shader::Topk, &["q", "k"]),
    ] {
        let m = validate(s, Variant::new(Storage::F16, false)).unwrap();
        let mut f16_bindings: Vec<&str> = m
            .global_variables
            .iter()
            .filter(|(_, g)| matches!(g.space, naga::AddressSpace::Storage { .. }))
            .filter(|(_, g)| {
                matches!(
                    m.types[g.ty].inner,
                    naga::TypeInner::Array { base, .. }
                        if m.types[base].inner == naga::TypeInner::Scalar(naga::Scalar::F16)
                )
            })
            .filter_map(|(_, g)| g.name.as_deref())
            .collect();
        f16_bindings.sort();
        let mut want = tensors.to_vec();
        want.sort();
        assert_eq!(f16_bindings, want, "{s}.wgsl");
    }
    // Without the capability the f16 variant is refused: the validation above used it.
    assert!(refused_without_capabilities(
        &Shader::GrKan.source(Variant::new(Storage::F16, false))
    ));
}

#[test]
fn packed_bf16_storage_declares_word_tensors() {
    // In packed bf16 exactly the op's tensors are words: `array<u32>` read, `array<atomic<u32>>`
    // written (lone-element stores are atomic read-modify-writes of the shared word); the
    // op files declare them `array<elem>` and touch them only through the generated accessors.
    for s in Shader::ALL {
        let m = validate(s, Variant::new(Storage::Bf16, false)).unwrap();
        let words = |atomic: bool| {
            let mut names: Vec<&str> = m
                .global_variables
                .iter()
                .filter(|(_, g)| matches!(g.space, naga::AddressSpace::Storage { .. }))
                .filter(|(_, g)| match m.types[g.ty].inner {
                    naga::TypeInner::Array { base, .. } => match m.types[base].inner {
                        naga::TypeInner::Atomic(sc) => atomic && sc == naga::Scalar::U32,
                        naga::TypeInner::Scalar(sc) => !atomic && sc == naga::Scalar::U32,
                        _ => false,
                    },
                    _ => false,
                })
                .filter_map(|(_, g)| g.name.as_deref())
                .collect();
            names.sort();
            names
        };
        let written = words(true);
        let (want_written, _): (Vec<&str>, Vec<&str>) = s
            .tensors()
            .into_iter()
            .partition(|t| ["out", "o_out", "dq", "dk", "dv"].contains(t));
        let mut want_written = want_written;
        want_written.sort();
        assert_eq!(written, want_written, "{s}.wgsl");
        for t in s.tensors() {
            assert!(
                written.contains(&t) || words(false).contains(&t),
                "{s}.wgsl: tensor {t} is not a word array"
            );
        }
        // Every `array<elem>` of the op file was recognised as a tensor binding and retyped (a
        // declaration the parser missed would stay `array<elem>` = f32 and read packed words as
        // floats); the count is the raw text's, independent of the parser.
        let src = s.source(Variant::new(Storage::Bf16, false));
        let plain = s.source(PLAIN);
        assert_eq!(
            plain.matches("array<elem>").count(),
            s.tensors().len(),
            "{s}.wgsl"
        );
        assert!(
            !src.contains("array<elem>"),
            "{s}.wgsl: a tensor binding was not retyped"
        );
        // No op file indexes a tensor binding directly (only the accessors do).
        let body = &src[..src.find("// Tensor accessors").unwrap()];
        for t in s.tensors() {
            assert!(
                !body.contains(&format!(" {t}[")),
                "{s}.wgsl indexes {t} directly"
            );
            assert!(
                !body.contains(&format!("({t}[")),
                "{s}.wgsl indexes {t} directly"
            );
        }
    }
}

/// Per entry point: a pipeline holds only its own entry point's workgroup globals.
#[test]
fn every_entry_point_fits_the_webgpu_default_workgroup_memory() {
    for v in Variant::ALL {
        for s in Shader::ALL {
            let m = validate(s, v).unwrap();
            for ep in &m.entry_points {
                let bytes = entry_workgroup_bytes(s, v, &ep.name, &[("DTYPE", 0.0)]).unwrap();
                println!(
                    "{s}.wgsl {} ({v}): {bytes} bytes of workgroup memory",
                    ep.name
                );
                assert!(
                    bytes <= WEBGPU_DEFAULT_WORKGROUP_STORAGE,
                    "{s}.wgsl {} uses {bytes} bytes of workgroup memory > \
                     {WEBGPU_DEFAULT_WORKGROUP_STORAGE}",
                    ep.name
                );
            }
        }
    }
}

#[test]
fn workgroup_memory_is_counted() {
    // The reductions' scratch arrays: 256 f32 in grkan; WG f32 + WG u32 in gumbel, whose
    // workgroup size WG is an override constant (64, or 256 for long rows), so they are counted
    // for the pipeline's value. A counter that returned 0 (or the default's size whatever the
    // override) would make the limit checks vacuous.
    let bytes = |s, entry, wg: Option<f64>| {
        let mut constants = vec![("DTYPE", 0.0)];
        constants.extend(wg.map(|v| ("WG", v)));
        entry_workgroup_bytes(s, PLAIN, entry, &constants).unwrap()
    };
    assert_eq!(bytes(Shader::GrKan, "grkan_backward_partials", None), 1024);
    assert_eq!(bytes(Shader::Gumbel, "gumbel_forward", None), 512);
    assert_eq!(bytes(Shader::Gumbel, "gumbel_forward", Some(64.0)), 512);
    assert_eq!(bytes(Shader::Gumbel, "gumbel_forward", Some(256.0)), 2048);
    // Per entry point: the pipeline's module keeps only its own entry point's globals (the
    // backward has no argmax, so no `red_idx`; the Philox check none at all).
    assert_eq!(bytes(Shader::Gumbel, "gumbel_backward", Some(256.0)), 1024);
    assert_eq!(bytes(Shader::Gumbel, "philox_words", None), 0);
    // Attention's tiled kernels stage everything through one 16 KiB array; Δ only its 64-slot
    // tree.
    for entry in [
        "attention_forward",
        "attention_backward_dq",
        "attention_backward_dkdv",
    ] {
        assert_eq!(bytes(Shader::Attention, entry, None), 16384, "{entry}");
    }
    assert_eq!(
        bytes(Shader::Attention, "attention_backward_delta", None),
        256
    );
    // The widest Gumbel pipeline fits WebGPU's default in every variant.
    for v in Variant::ALL {
        let b = entry_workgroup_bytes(
            Shader::Gumbel,
            v,
            "gumbel_forward",
            &[("DTYPE", 2.0), ("WG", 256.0)],
        )
        .unwrap();
        assert!(b <= WEBGPU_DEFAULT_WORKGROUP_STORAGE, "{v}: {b}");
    }
    // An override the shader does not declare is an error, not silently ignored.
    assert!(entry_workgroup_bytes(Shader::GrKan, PLAIN, "grkan_forward", &[("WG", 64.0)]).is_err());
}

/// Each entry point's pipeline binds only the storage buffers it reaches (naga keeps only what
/// the entry point can touch), so kernels that share a module do not count each other's
/// buffers against the adapter's per-stage limit. The attention kernels reach more than they
/// use (`load` and `store` pick a tensor at run time), and the host binds stand-ins there.
#[test]
fn entry_points_bind_only_the_storage_buffers_they_reach() {
    let bindings = |s, e| entry_resources(s, PLAIN, e, &[]).unwrap().storage_bindings;
    for (s, e, want) in [
        // q k v, o dq dk dv (store), lse, counts indices, rho residual, dO (load), state
        (
            Shader::Attention,
            "attention_forward",
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 14, 15, 16, 19][..],
        ),
        // o, dO, lse in, (lse, Δ) out
        (
            Shader::Attention,
            "attention_backward_delta",
            &[10, 11, 12, 13],
        ),
        // q k v dO, o dq dk dv and ρ R (store), (lse, Δ), counts indices, state
        (
            Shader::Attention,
            "attention_backward_dq",
            &[1, 2, 3, 4, 6, 7, 8, 9, 11, 13, 14, 15, 16, 19],
        ),
        // q k v dO, o dq dk dv and ρ R (store), (lse, Δ), transposed counts indices, state
        (
            Shader::Attention,
            "attention_backward_dkdv",
            &[1, 2, 3, 4, 8, 9, 11, 13, 14, 15, 16, 17, 18, 19],
        ),
        (Shader::Topk, "topk_pool", &[1, 2, 3, 4]),
        (Shader::Topk, "topk_select", &[3, 4, 5, 6, 7]),
        (Shader::GrKan, "grkan_forward", &[1, 2, 3, 5]),
        (
            Shader::GrKan,
            "grkan_backward_partials",
            &[1, 2, 3, 4, 5, 6],
        ),
        (Shader::GrKan, "grkan_backward_reduce", &[6, 7, 8]),
        (Shader::Gumbel, "gumbel_noise", &[2]),
        (Shader::Ceiling, "fma_peak", &[1]),
    ] {
        assert_eq!(bindings(s, e), want, "{s}.wgsl {e}");
    }
}
