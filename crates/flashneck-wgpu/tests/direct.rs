//! Direct tests of the wgpu kernels against the f64 oracles of flashneck-cpu, on random ragged
//! inputs, with every output poisoned with NaN before the kernel runs and SPEC's tolerances.
//! They complement the conformance suite (tests/conformance.rs) with wgpu-specific checks:
//! the Philox words and the accurate log1p of the shader, tiles crossing group boundaries,
//! bitwise reproducibility of the reduced coefficient gradients, and typed device errors.

mod common;

use common::backend;
use flashneck_conformance::sparse::random_layout;
use flashneck_conformance::{assert_close, fresh_rng, nan_buffer, random_input};
use flashneck_core::philox::{gumbel_noise_at, philox4x32_10};
use flashneck_core::{
    Backend, DType, Element, Error, GrKanOps, GrKanParams, GumbelOps, GumbelParams,
};
use flashneck_cpu::oracle;
use half::{bf16, f16};
use rand::Rng;

// ---------------------------------------------------------------- device plumbing

#[test]
fn buffers_round_trip_every_type() {
    let b = backend();
    let v: Vec<f32> = (0..1000).map(|i| i as f32 * 0.37 - 100.0).collect();
    assert_eq!(b.download(&b.upload(&v).unwrap()).unwrap(), v);
    let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
    assert_eq!(b.download(&b.upload(&h).unwrap()).unwrap(), h);
    let bh: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
    assert_eq!(b.download(&b.upload(&bh).unwrap()).unwrap(), bh);
    let u: Vec<u32> = (0..77).map(|i| i * 0x01010101).collect();
    assert_eq!(b.download(&b.upload(&u).unwrap()).unwrap(), u);
    assert!(b.download(&b.alloc::<f32>(0).unwrap()).unwrap().is_empty());
    assert_eq!(
        b.download(&b.alloc::<f32>(5).unwrap()).unwrap(),
        vec![0.0; 5]
    );
}

/// f16 tensors are native f16 on the device where the adapter has SHADER_F16 (lavapipe does),
/// f32 words on the fallback backend; both round-trip every f16 bit pattern class exactly.
#[test]
fn f16_storage_is_native_where_the_adapter_has_shader_f16() {
    use flashneck_wgpu::Storage;
    let native = backend();
    let fallback = common::backend_baseline();
    println!("SHADER_F16: {}", native.has_shader_f16());
    // has_shader_f16 already says whether the options (and FLASHNECK_WGPU_NO_F16) wanted it.
    let want = if native.has_shader_f16() {
        Storage::F16
    } else {
        Storage::F32
    };
    // Odd lengths: the last word of a native buffer is half padding.
    let h: Vec<f16> = [
        0.0f32,
        -0.0,
        1.0,
        -2.5,
        65504.0,
        6e-8,
        -6.1e-5,
        f32::INFINITY,
    ]
    .iter()
    .map(|&x| f16::from_f32(x))
    .chain([f16::NAN, f16::NEG_INFINITY, f16::from_bits(0x7c01)])
    .collect();
    for (b, storage) in [(&native, want), (&fallback, Storage::F32)] {
        assert_eq!(b.storage(DType::F16), storage);
        assert_eq!(b.storage(DType::BF16), Storage::Bf16);
        let d = b.upload(&h).unwrap();
        assert_eq!(d.storage(), storage);
        assert_eq!(b.alloc::<f16>(3).unwrap().storage(), storage);
        let back = b.download(&d).unwrap();
        // Bit for bit, NaNs included (the f32 path keeps the payload's top bits: quiet NaN).
        for (x, y) in h.iter().zip(&back) {
            assert!(
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                "{storage}: {x:?} came back {y:?}"
            );
        }
    }
}

/// bf16 tensors are packed two per 32-bit word on every adapter (half the bytes of f32), and
/// round-trip every bf16 bit pattern class exactly, odd lengths included.
#[test]
fn bf16_tensors_are_packed_two_per_word() {
    use flashneck_wgpu::Storage;
    let specials: Vec<bf16> = [
        0.0f32,
        -0.0,
        1.0,
        -2.5,
        3.3e38,
        1e-40,
        -9.2e-41,
        f32::INFINITY,
    ]
    .iter()
    .map(|&x| bf16::from_f32(x))
    .chain([
        bf16::NAN,
        bf16::NEG_INFINITY,
        bf16::from_bits(0x7f81),
        bf16::from_bits(0xffc1),
    ])
    .collect();
    let (mut rng, seed) = fresh_rng();
    for b in [backend(), common::backend_baseline()] {
        assert_eq!(b.storage(DType::BF16), Storage::Bf16);
        for n in [1usize, 2, specials.len(), 1001] {
            let h: Vec<bf16> = (0..n)
                .map(|i| match specials.get(i) {
                    Some(&v) => v,
                    None => bf16::from_bits(rng.r#gen()),
                })
                .collect();
            let d = b.upload(&h).unwrap();
            assert_eq!(d.storage(), Storage::Bf16);
            assert_eq!(d.raw().size(), (n as u64).div_ceil(2) * 4, "{n} elements");
            let back = b.download(&d).unwrap();
            let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&back), bits(&h), "{n} elements (seed {seed})");
        }
        assert_eq!(b.alloc::<bf16>(3).unwrap().raw().size(), 8);
    }
}

/// Packed bf16 stores round to nearest even (ties included), keep NaN, and overflow to ±inf,
/// both for a thread's pair of elements and for the lone last one of an odd length:
/// y = c·x through GR-KAN with P = c·x, Q = 1, c = 1 + 2⁻⁸ (so c·x of a power of two is a tie).
#[test]
fn bf16_stores_round_to_nearest_even_and_keep_nan() {
    let (mut rng, seed) = fresh_rng();
    let c = 1.0f32 + 2f32.powi(-8);
    let mut x: Vec<bf16> = (0..301)
        .map(|_| bf16::from_f32((rng.r#gen::<f32>() - 0.5) * 8.0))
        .collect();
    x.extend(
        // Ties (powers of two), a round-up, large, overflowing (c · -3.39e38 rounds to -inf),
        // signed zeros.
        [1.0f32, -4.0, 0.5, 1.0078125, 3.3e38, -3.39e38, 0.0, -0.0]
            .iter()
            .map(|&v| bf16::from_f32(v)),
    );
    x.push(bf16::NAN);
    for n in [x.len(), x.len() - 1] {
        let x = &x[..n];
        let p = GrKanParams::new(n, 1, 1).with_degrees(1, 0);
        let b = backend();
        let mut y = nan_buffer::<_, bf16>(&b, n);
        b.grkan_forward(
            &p,
            &b.upload(x).unwrap(),
            &b.upload(&[0.0f32, c]).unwrap(),
            &b.upload::<f32>(&[]).unwrap(),
            &mut y,
        )
        .unwrap();
        let y = b.download(&y).unwrap();
        let ties = x
            .iter()
            .filter(|v| v.to_f32() != 0.0 && v.to_f32().log2().fract() == 0.0);
        assert!(ties.count() >= 2);
        for (xi, yi) in x.iter().zip(&y) {
            let want = bf16::from_f32(c * xi.to_f32() + 0.0);
            assert!(
                want.to_bits() == yi.to_bits() || (want.is_nan() && yi.is_nan()),
                "{n} elements: {c} * {xi:?} gave {yi:?}, want {want:?} (seed {seed})"
            );
        }
    }
}

/// The optional features each backend uses, and the shader variants they select. Lavapipe (the
/// CI driver) has SHADER_F16 and SUBGROUP, so there both paths of each run: the default backend
/// with them, the baseline without (a driver or wgpu update that lost them would make half of
/// the suite test the same path twice, so it fails here).
#[test]
fn optional_features_select_the_shader_variants() {
    use flashneck_wgpu::shaders::Shader;
    let (b, base) = (backend(), common::backend_baseline());
    let info = b.adapter_info();
    println!(
        "{}: SHADER_F16 {}, subgroups {}",
        info.name,
        b.has_shader_f16(),
        b.has_subgroups()
    );
    if info.driver.contains("llvmpipe") && std::env::var_os("FLASHNECK_WGPU_NO_F16").is_none() {
        assert!(b.has_shader_f16(), "lavapipe has SHADER_F16");
    }
    if info.driver.contains("llvmpipe") && std::env::var_os("FLASHNECK_WGPU_NO_SUBGROUPS").is_none()
    {
        assert!(b.has_subgroups(), "lavapipe has SUBGROUP");
    }
    assert!(!base.has_shader_f16() && !base.has_subgroups());
    for s in Shader::ALL {
        let v = b.variant(s, DType::F16);
        assert_eq!(v.subgroups, b.has_subgroups() && s.has_reductions(), "{s}");
        assert_eq!(v.storage, b.storage(DType::F16));
        assert!(!base.variant(s, DType::F16).subgroups);
    }
}

/// The subgroup reductions (default backend on lavapipe) and the workgroup trees (baseline)
/// agree within f32 rounding on the same inputs, for Gumbel's row max and sums (K > 64, a
/// workgroup per row) and GR-KAN's coefficient gradients (256-thread workgroups, so 32
/// subgroups of 8 on lavapipe); the subgroup path is bitwise reproducible.
#[test]
fn reductions_agree_with_and_without_subgroups() {
    if !backend().has_subgroups() {
        // Not silent: on such an adapter both runs take the tree (lavapipe has SUBGROUP, and
        // `optional_features_select_the_shader_variants` insists on it there).
        println!("note: no SUBGROUP on this adapter: both runs below take the workgroup tree");
    }
    let (mut rng, seed) = fresh_rng();
    let gp = GumbelParams::new(5, 1000, 0.7).with_seed(rng.r#gen(), rng.r#gen());
    let (logits, _) = random_input::<f32>(&mut rng, gp.len(), 3.0);
    let (dy, _) = random_input::<f32>(&mut rng, gp.len(), 1.0);
    let kp = GrKanParams::new(2000, 64, 4);
    let (x, _) = random_input::<f32>(&mut rng, kp.x_len(), 1.0);
    let (a, _) = random_input::<f32>(&mut rng, kp.a_len(), 0.5);
    let (bb, _) = random_input::<f32>(&mut rng, kp.b_len(), 0.5);
    let (kdy, _) = random_input::<f32>(&mut rng, kp.x_len(), 1.0);
    let run = |b: &flashneck_wgpu::WgpuBackend| {
        let mut y = nan_buffer::<_, f32>(b, gp.len());
        let mut ys = nan_buffer::<_, f32>(b, gp.len());
        let ld = b.upload(&logits).unwrap();
        b.gumbel_softmax_forward(&gp, &ld, &mut y, Some(&mut ys))
            .unwrap();
        let mut dl = nan_buffer::<_, f32>(b, gp.len());
        b.gumbel_softmax_backward(&gp, &ys, &b.upload(&dy).unwrap(), &mut dl)
            .unwrap();
        let mut dx = nan_buffer::<_, f32>(b, kp.x_len());
        let mut da = nan_buffer::<_, f32>(b, kp.a_len());
        let mut db = nan_buffer::<_, f32>(b, kp.b_len());
        b.grkan_backward(
            &kp,
            &b.upload(&x).unwrap(),
            &b.upload(&a).unwrap(),
            &b.upload(&bb).unwrap(),
            &b.upload(&kdy).unwrap(),
            &mut dx,
            &mut da,
            &mut db,
        )
        .unwrap();
        [ys, dl, da, db].map(|d| b.download(&d).unwrap())
    };
    let sub = run(&backend());
    let tree = run(&common::backend_baseline());
    for (name, s, t) in ["y_soft", "dlogits", "da", "db"]
        .iter()
        .zip(&sub)
        .zip(&tree)
        .map(|((n, s), t)| (n, s, t))
    {
        let t64: Vec<f64> = t.iter().map(|&v| v as f64).collect();
        assert_close(&format!("{name}: subgroups vs tree"), s, &t64, 1e-5, seed);
    }
    let again = run(&backend());
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for (s, a) in sub.iter().zip(&again) {
        assert_eq!(bits(s), bits(a), "subgroup reductions differ between runs");
    }
}

/// The kernels' store rounds to f16 (ties to even), overflows to ±inf and keeps NaN, in both
/// storages: y = 2x through GR-KAN with P = 2x, Q = 1.
#[test]
fn f16_stores_round_overflow_and_keep_nan_in_both_storages() {
    let (mut rng, seed) = fresh_rng();
    // Finite inputs (Q = 1 + 0·|x| is NaN at x = ±inf); about half of them overflow when
    // doubled.
    let mut x: Vec<f16> = (0..200)
        .map(|_| f16::from_f32((rng.r#gen::<f32>() - 0.5) * 1.3e5))
        .collect();
    x.extend(
        [
            40000.0f32, -40000.0, 32752.0, 32760.0, 6e-8, -3e-8, 0.0, -0.0,
        ]
        .iter()
        .map(|&v| f16::from_f32(v)),
    );
    x.push(f16::NAN);
    let p = GrKanParams::new(x.len(), 1, 1).with_degrees(1, 0);
    for b in [backend(), common::backend_baseline()] {
        let storage = b.storage(DType::F16);
        let mut y = nan_buffer::<_, f16>(&b, x.len());
        b.grkan_forward(
            &p,
            &b.upload(&x).unwrap(),
            &b.upload(&[0.0f32, 2.0]).unwrap(),
            &b.upload::<f32>(&[]).unwrap(),
            &mut y,
        )
        .unwrap();
        let y = b.download(&y).unwrap();
        for (xi, yi) in x.iter().zip(&y) {
            // P = a1·x + a0 (so −0 gives +0), Q = 1.
            let want = f16::from_f32(2.0 * xi.to_f32() + 0.0);
            assert!(
                want.to_bits() == yi.to_bits() || (want.is_nan() && yi.is_nan()),
                "{storage}: 2 * {xi:?} gave {yi:?}, want {want:?} (seed {seed})"
            );
        }
    }
}

#[test]
fn oversized_buffer_is_a_typed_error() {
    let b = backend();
    let max = b.limits().max_storage_buffer_binding_size;
    let too_many = (max / 4 + 1) as usize;
    match b.alloc::<f32>(too_many) {
        Err(Error::BadParameter { arg: "len", .. }) => {}
        other => panic!("expected BadParameter for {too_many} elements, got {other:?}"),
    }
}

#[test]
fn every_shader_fits_the_adapter_workgroup_memory() {
    use flashneck_wgpu::shaders::{Shader, entry_workgroup_bytes, validate};
    let b = backend();
    let limit = u64::from(b.limits().max_compute_workgroup_storage_size);
    println!(
        "max_compute_workgroup_storage_size {limit}, SHADER_F16 {}, timestamps {}",
        b.has_shader_f16(),
        b.has_timestamps()
    );
    for s in Shader::ALL {
        let v = b.variant(s, DType::F16);
        for ep in &validate(s, v).unwrap().entry_points {
            let bytes = entry_workgroup_bytes(s, v, &ep.name, &[("DTYPE", 1.0)]).unwrap();
            assert!(
                bytes <= limit,
                "{s}.wgsl {}: {bytes} bytes > adapter limit {limit}",
                ep.name
            );
        }
    }
}

/// Without any Vulkan driver `WgpuBackend::new()` is `Error::Device`, not a panic. The check
/// runs in a child process of this test binary whose Vulkan loader is pointed at no driver.
#[test]
fn missing_adapter_is_a_typed_error() {
    const CHILD: &str = "FLASHNECK_WGPU_NO_DRIVER_CHILD";
    if std::env::var_os(CHILD).is_some() {
        match flashneck_wgpu::WgpuBackend::new() {
            Err(Error::Device { message, .. }) => println!("no adapter: {message}"),
            Err(e) => panic!("expected Error::Device, got {e:?}"),
            Ok(b) => panic!("found an adapter without a driver: {:?}", b.adapter_info()),
        }
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["missing_adapter_is_a_typed_error", "--exact", "--nocapture"])
        .env(CHILD, "1")
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(
        text.contains("no adapter:"),
        "child did not run the check:\n{text}"
    );
}

#[test]
fn lost_device_is_a_typed_error() {
    // A device of its own: the shared one must stay alive.
    let b = flashneck_wgpu::WgpuBackend::new().unwrap();
    let x = b.upload(&[1.0f32, 2.0]).unwrap();
    b.destroy();
    assert!(
        matches!(b.download(&x), Err(Error::Device { .. })),
        "download after destroy"
    );
    let p = GrKanParams::new(1, 2, 1);
    let (a, bb) = (b.upload(&[0.0f32; 6]), b.upload(&[0.0f32; 4]));
    if let (Ok(a), Ok(bb)) = (a, bb) {
        let mut y = b
            .alloc::<f32>(2)
            .unwrap_or_else(|_| b.upload(&[0.0f32; 2]).unwrap());
        assert!(matches!(
            b.grkan_forward(&p, &x, &a, &bb, &mut y),
            Err(Error::Device { .. })
        ));
    }
    assert!(matches!(b.synchronize(), Err(Error::Device { .. })));
}

#[test]
fn timing_helpers_measure_something() {
    let b = backend();
    let ms = b.time_ms(&mut || b.synchronize()).unwrap();
    assert!(ms >= 0.0 && ms.is_finite());
    let gbs = b.copy_bandwidth_gbs(1 << 20).unwrap();
    assert!(gbs > 0.0 && gbs.is_finite(), "{gbs} GB/s");
}

/// The FMA ceiling runs its loop (it checks from the stored sums that every trip ran)
/// and, on a CPU adapter, stays under what the host's cores could issue: 2 FMA units × 16 f32
/// lanes × 2 FLOP × 5 GHz per core. A loop the compiler dropped would report far more.
#[test]
fn fma_peak_is_measured() {
    let b = backend();
    let tflops = b.fma_peak_tflops(64, 5.0).unwrap();
    println!(
        "f32 FMA peak {tflops:.4} TFLOP/s on {}",
        b.adapter_info().name
    );
    assert!(tflops > 0.0 && tflops.is_finite(), "{tflops} TFLOP/s");
    if b.adapter_info().device_type == wgpu::DeviceType::Cpu {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(tflops < cores * 0.32, "{tflops} TFLOP/s on {cores} cores");
    }
}

// ---------------------------------------------------------------- Philox and noise

#[test]
fn philox_words_match_spec_known_answers() {
    let b = backend();
    let cases = [
        (
            [0u32; 4],
            [0u32; 2],
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
        ),
        (
            [u32::MAX; 4],
            [u32::MAX; 2],
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
        ),
        (
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0],
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
        ),
    ];
    for (c, k, want) in cases {
        assert_eq!(
            b.philox_words(c, k).unwrap(),
            want,
            "counter {c:x?} key {k:x?}"
        );
    }
    // Random counters and keys: the 16-bit-limb high product equals the 64-bit one.
    let (mut rng, seed) = fresh_rng();
    for _ in 0..20 {
        let c: [u32; 4] = rng.r#gen();
        let k: [u32; 2] = rng.r#gen();
        assert_eq!(
            b.philox_words(c, k).unwrap(),
            philox4x32_10(c, k),
            "seed {seed}"
        );
    }
}

#[test]
fn noise_matches_rust_ln_1p_reference() {
    let b = backend();
    let (mut rng, seed) = fresh_rng();
    let (s, off): (u64, u64) = (rng.r#gen(), rng.r#gen());
    let n = 40_003;
    let mut out = nan_buffer::<_, f32>(&b, n);
    b.gumbel_noise(s, off, &mut out).unwrap();
    let got = b.download(&out).unwrap();
    // The reference uses Rust's ln_1p; the shader has its own log1p (an atanh series).
    let want: Vec<f64> = (0..n as u64)
        .map(|i| gumbel_noise_at(s, off, i) as f64)
        .collect();
    assert_close("gumbel_noise vs ln_1p reference", &got, &want, 2e-5, seed);
    // The large values (u near 1) are the ones a plain ln(u) gets wrong.
    let big = want.iter().filter(|&&g| g > 9.0).count();
    println!("{big} of {n} samples have g > 9");
    let mean = got.iter().map(|&g| g as f64).sum::<f64>() / n as f64;
    assert!((mean - 0.5772).abs() < 0.03, "mean {mean}, seed {seed}");
}

// ---------------------------------------------------------------- GR-KAN

fn grkan_case<T: Element>(p: GrKanParams, rng: &mut impl Rng, seed: u64) {
    let b = backend();
    let (x, x64) = random_input::<T>(rng, p.x_len(), 1.0);
    let (a, a64) = random_input::<f32>(rng, p.a_len(), 0.5);
    let (bb, b64) = random_input::<f32>(rng, p.b_len(), 0.5);
    let (dy, dy64) = random_input::<T>(rng, p.x_len(), 1.0);
    let (xd, ad, bd, dyd) = (
        b.upload(&x).unwrap(),
        b.upload(&a).unwrap(),
        b.upload(&bb).unwrap(),
        b.upload(&dy).unwrap(),
    );
    let what = format!("grkan {} {p:?} seed {seed}", T::DTYPE);
    let mut y = nan_buffer::<_, T>(&b, p.x_len());
    b.grkan_forward(&p, &xd, &ad, &bd, &mut y).unwrap();
    let want = oracle::grkan::grkan_forward(&p, &x64, &a64, &b64);
    let tol = T::DTYPE.elementwise_tolerance();
    assert_close(&what, &b.download(&y).unwrap(), &want, tol, seed);

    let run = || {
        let mut dx = nan_buffer::<_, T>(&b, p.x_len());
        let mut da = nan_buffer::<_, f32>(&b, p.a_len());
        let mut db = nan_buffer::<_, f32>(&b, p.b_len());
        b.grkan_backward(&p, &xd, &ad, &bd, &dyd, &mut dx, &mut da, &mut db)
            .unwrap();
        (
            b.download(&dx).unwrap(),
            b.download(&da).unwrap(),
            b.download(&db).unwrap(),
        )
    };
    let (dx, da, db) = run();
    let (wdx, wda, wdb) = oracle::grkan::grkan_backward(&p, &x64, &a64, &b64, &dy64);
    assert_close(&format!("{what} dx"), &dx, &wdx, tol, seed);
    let sum_tol = DType::F32.reduction_tolerance();
    assert_close(&format!("{what} da"), &da, &wda, sum_tol, seed);
    assert_close(&format!("{what} db"), &db, &wdb, sum_tol, seed);
    // The fixed-order reduction is bitwise reproducible.
    let (dx2, da2, db2) = run();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&da), bits(&da2), "{what}: da differs between runs");
    assert_eq!(bits(&db), bits(&db2), "{what}: db differs between runs");
    assert!(dx == dx2, "{what}: dx differs between runs");
}

fn grkan_shapes<T: Element>() {
    let (mut rng, seed) = fresh_rng();
    for p in [
        GrKanParams::new(1, 1, 1),
        GrKanParams::new(37, 24, 4),
        // Many rows: several tiles per group, so the second (fixed-order) pass matters.
        GrKanParams::new(1031, 40, 8).with_degrees(7, 7),
        GrKanParams::new(300, 130, 2).with_degrees(0, 1),
        GrKanParams::new(5, 9, 3).with_degrees(3, 0),
        // A row's group columns span group_width / 2 + 1 pair slots, walked 256 at a time:
        // more slots than threads (551), a multiple of them (128: whole rows per step) and a
        // remainder carried into the next row (151).
        GrKanParams::new(7, 1100, 1),
        GrKanParams::new(5, 510, 2).with_degrees(2, 6),
        GrKanParams::new(9, 600, 2),
    ] {
        grkan_case::<T>(p, &mut rng, seed);
    }
}

#[test]
fn grkan_matches_oracle_f32() {
    grkan_shapes::<f32>();
}

#[test]
fn grkan_matches_oracle_f16() {
    grkan_shapes::<f16>();
}

#[test]
fn grkan_matches_oracle_bf16() {
    grkan_shapes::<bf16>();
}

// ---------------------------------------------------------------- Gumbel-Softmax

fn gumbel_case<T: Element>(p: GumbelParams, rng: &mut impl Rng, seed: u64) {
    let b = backend();
    let (logits, l64) = random_input::<T>(rng, p.len(), 2.0);
    let ld = b.upload(&logits).unwrap();
    let what = format!("gumbel {} {p:?} seed {seed}", T::DTYPE);
    let mut y = nan_buffer::<_, T>(&b, p.len());
    let mut ys = nan_buffer::<_, f32>(&b, p.len());
    b.gumbel_softmax_forward(&p, &ld, &mut y, Some(&mut ys))
        .unwrap();
    let (wy, wys) = oracle::gumbel::gumbel_forward(&p, &l64);
    let tol = T::DTYPE.elementwise_tolerance();
    let ys_host = b.download(&ys).unwrap();
    assert_close(&format!("{what} y_soft"), &ys_host, &wys, 2e-5, seed);
    let y_host = b.download(&y).unwrap();
    if p.hard {
        // One-hot rows; the hot index is the argmax of the oracle's soft sample unless two
        // soft values are within the tolerance of each other.
        for r in 0..p.rows {
            let row = &y_host[r * p.classes..(r + 1) * p.classes];
            let hot: Vec<usize> = (0..p.classes).filter(|&k| row[k].to_f32() == 1.0).collect();
            assert_eq!(hot.len(), 1, "{what}: row {r} is not one-hot: {row:?}");
            assert!(row.iter().all(|v| v.to_f32() == 0.0 || v.to_f32() == 1.0));
            let w = (0..p.classes)
                .find(|&k| wy[r * p.classes + k] == 1.0)
                .unwrap();
            let ws = &wys[r * p.classes..(r + 1) * p.classes];
            assert!(
                hot[0] == w || (ws[hot[0]] - ws[w]).abs() < 1e-6,
                "{what}: row {r} argmax {} vs {w}",
                hot[0]
            );
        }
    } else {
        assert_close(&format!("{what} y"), &y_host, &wy, tol, seed);
    }
    // Without y_soft the forward still runs.
    let mut y2 = nan_buffer::<_, T>(&b, p.len());
    b.gumbel_softmax_forward(&p, &ld, &mut y2, None).unwrap();
    assert!(
        b.download(&y2).unwrap() == y_host,
        "{what}: y differs without y_soft"
    );

    let (dy, dy64) = random_input::<T>(rng, p.len(), 1.0);
    let mut dl = nan_buffer::<_, T>(&b, p.len());
    b.gumbel_softmax_backward(&p, &ys, &b.upload(&dy).unwrap(), &mut dl)
        .unwrap();
    let ys64: Vec<f64> = ys_host.iter().map(|&v| v as f64).collect();
    let want = oracle::gumbel::gumbel_backward(&p, &ys64, &dy64);
    assert_close(
        &format!("{what} dlogits"),
        &b.download(&dl).unwrap(),
        &want,
        tol,
        seed,
    );
}

/// (rows, K, tau) on both sides of each change of threads per row (`row_launch`: the fewest of
/// 1, 2, 4, ..., 64 whose 4 register quads each hold every row of K classes, else 256), so
/// that a workgroup of 64 threads takes 64, 32, ..., 1 rows. Odd K puts row boundaries
/// mid-word in packed bf16: (9, 7) has threads of one workgroup sharing words. Threads per row:
/// 1 for (1, 1), (70, 10), (9, 7) and (4, 13), the last one-thread K (row 3 starts at offset 3
/// of a quad and fills 4 quads); 2 for (4, 15), whose row 1 overlaps 5 quads, and (5, 29),
/// whose rows overlap 8; 4 for (5, 31) (9 quads) and (5, 64); 8 for (4, 65); 16 for (6, 200);
/// 32 for (33, 257); 64 for (3, 1000) and (5, 1021), which fills 64 threads at every
/// alignment; 256 for (2, 1023), the first, (2, 2053), and (2, 4093) and (2, 4096), which fill
/// them; row 1 of (2, 4095) overlaps 1025 quads, one more than 256 threads hold, so the rest
/// goes through the f32 row of binding 3 (a scratch buffer when y_soft is not asked for).
/// Workgroups past the last row: the second of (70, 10), the last of (6, 200) and of (33, 257)
/// hold rows past it whose threads only join the barriers.
const SHAPES: [(usize, usize, f32); 18] = [
    (4, 13, 0.9),
    (4, 15, 1.2),
    (5, 29, 0.9),
    (5, 31, 1.1),
    (6, 200, 0.6),
    (5, 1021, 0.8),
    (2, 1023, 0.6),
    (2, 4093, 1.0),
    (2, 4095, 0.7),
    (2, 4096, 1.4),
    (1, 1, 1.0),
    (70, 10, 0.5),
    (9, 7, 0.8),
    (5, 64, 0.7),
    (4, 65, 1.3),
    (33, 257, 1.0),
    (3, 1000, 2.0),
    (2, 2053, 1.1),
];

fn gumbel_shapes<T: Element>() {
    let (mut rng, seed) = fresh_rng();
    for hard in [false, true] {
        for (rows, classes, tau) in SHAPES {
            let p = GumbelParams::new(rows, classes, tau)
                .with_seed(rng.r#gen(), rng.r#gen())
                .with_hard(hard);
            gumbel_case::<T>(p, &mut rng, seed);
        }
    }
}

#[test]
fn gumbel_matches_oracle_f32() {
    gumbel_shapes::<f32>();
}

#[test]
fn gumbel_matches_oracle_f16() {
    gumbel_shapes::<f16>();
}

#[test]
fn gumbel_matches_oracle_bf16() {
    gumbel_shapes::<bf16>();
}

// ---------------------------------------------------------------- attention

use flashneck_core::{
    AttentionParams, AttentionShape, BlockLayout, SparseAttentionOps, SparseEpilogue, TopkParams,
};

/// Random Q, K, V for `p`, as `T` and as f64.
struct Qkv<T> {
    q: (Vec<T>, Vec<f64>),
    k: (Vec<T>, Vec<f64>),
    v: (Vec<T>, Vec<f64>),
}

impl<T: Element> Qkv<T> {
    fn random(p: &AttentionParams, rng: &mut impl Rng) -> Self {
        let s = &p.shape;
        Qkv {
            q: random_input(rng, s.q_len(), 1.0),
            k: random_input(rng, s.k_len(), 1.0),
            v: random_input(rng, s.v_len(), 1.0),
        }
    }
}

/// Forward and backward over `layout` (dense when `None`) against the oracle, and the backward's
/// bits run to run (the suite's shared check for fixed cases).
fn attention_case<T: Element>(p: AttentionParams, layout: Option<&BlockLayout>, seed: u64) {
    flashneck_conformance::attention::check_case::<_, T>(&backend(), "attention", &p, layout, seed);
}

/// Ragged shapes: D != Dv, D = 256, GQA, MQA, Lq > Lk and Lq < Lk under causal masking.
fn attention_shapes() -> Vec<AttentionParams> {
    let mut odd = AttentionShape::gqa(2, 4, 2, 37, 81, 40);
    odd.head_dim_v = 72;
    vec![
        AttentionParams::new(odd),
        AttentionParams::new(odd).with_causal(true),
        AttentionParams::new(AttentionShape::gqa(1, 3, 1, 70, 19, 256)).with_causal(true),
        AttentionParams::new(AttentionShape::mha(1, 1, 130, 65, 3)).with_scale(0.9),
        AttentionParams::new(AttentionShape::mha(1, 2, 1, 1, 1)),
    ]
}

#[test]
fn dense_attention_matches_oracle_f32() {
    let (_, seed) = fresh_rng();
    for p in attention_shapes() {
        attention_case::<f32>(p, None, seed);
    }
}

#[test]
fn dense_attention_matches_oracle_halves() {
    let (_, seed) = fresh_rng();
    // Dv = 72 and D = 40; D = Dv = 3 (odd: rows of O, dQ, dK, dV start mid-word in packed
    // bf16, written by different threads).
    for p in [attention_shapes()[1], attention_shapes()[3]] {
        attention_case::<f16>(p, None, seed);
        attention_case::<bf16>(p, None, seed);
    }
}

#[test]
fn sparse_attention_matches_oracle() {
    let (mut rng, seed) = fresh_rng();
    let mut shape = AttentionShape::gqa(1, 4, 2, 150, 200, 24);
    shape.head_dim_v = 33;
    for causal in [false, true] {
        let p = AttentionParams::new(shape).with_causal(causal);
        let layout = random_layout(&p, &mut rng, 0.5);
        attention_case::<f32>(p, Some(&layout), seed);
    }
}

#[test]
fn sparse_epilogue_matches_oracle() {
    let b = backend();
    let (mut rng, seed) = fresh_rng();
    let p = AttentionParams::new(AttentionShape::gqa(2, 2, 1, 90, 140, 16)).with_causal(true);
    let s = p.shape;
    let layout = random_layout(&p, &mut rng, 0.5);
    let x = Qkv::<f32>::random(&p, &mut rng);
    let (rho, rho64) = random_input::<f32>(&mut rng, s.lse_len(), 1.0);
    let (res, res64) = random_input::<f32>(&mut rng, s.o_len(), 1.0);
    let rho_d = b.upload(&rho).unwrap();
    let res_d = b.upload(&res).unwrap();
    let mut o = nan_buffer::<_, f32>(&b, s.o_len());
    let mut lse = nan_buffer::<_, f32>(&b, s.lse_len());
    let r = b.sparse_attention_forward(
        &p,
        &b.upload_layout(&layout).unwrap(),
        &b.upload(&x.q.0).unwrap(),
        &b.upload(&x.k.0).unwrap(),
        &b.upload(&x.v.0).unwrap(),
        SparseEpilogue {
            row_scale: Some(&rho_d),
            residual: Some(&res_d),
        },
        &mut o,
        &mut lse,
    );
    // An adapter with too few storage buffers per stage (SwiftShader's wgpu limit is 10)
    // neither claims nor runs it: the suite's `ran` says so on stderr, and fails otherwise.
    if flashneck_conformance::ran(&b, flashneck_core::OpKind::SparseForward, DType::F32, r)
        .is_none()
    {
        return;
    }
    let (wo, wlse) = oracle::attention::attention_forward(
        &p,
        Some(&layout),
        &x.q.1,
        &x.k.1,
        &x.v.1,
        Some(&rho64),
        Some(&res64),
    );
    assert_close("epilogue o", &b.download(&o).unwrap(), &wo, 1e-4, seed);
    assert_close(
        "epilogue lse",
        &b.download(&lse).unwrap(),
        &wlse,
        1e-4,
        seed,
    );
}

#[test]
fn block_topk_matches_oracle() {
    let b = backend();
    let (mut rng, seed) = fresh_rng();
    for (causal, lq, lk, topk) in [
        (
            false,
            200,
            300,
            TopkParams {
                keep: 2,
                sink: 1,
                local: 1,
            },
        ),
        (
            true,
            300,
            300,
            TopkParams {
                keep: 1,
                sink: 1,
                local: 2,
            },
        ),
        (
            true,
            100,
            520,
            TopkParams {
                keep: 3,
                sink: 0,
                local: 0,
            },
        ),
        (
            true,
            400,
            70,
            TopkParams {
                keep: 9,
                sink: 9,
                local: 9,
            },
        ),
    ] {
        let p = AttentionParams::new(AttentionShape::gqa(2, 4, 2, lq, lk, 20)).with_causal(causal);
        let x = Qkv::<f32>::random(&p, &mut rng);
        let got = b
            .block_topk(
                &p,
                &topk,
                &b.upload(&x.q.0).unwrap(),
                &b.upload(&x.k.0).unwrap(),
            )
            .unwrap();
        let want = oracle::attention::block_topk(&p, &topk, &x.q.1, &x.k.1);
        assert_eq!(got.host(), &want, "block_topk {p:?} {topk:?} seed {seed}");
        assert_eq!(b.download(got.counts()).unwrap(), want.counts());
        assert_eq!(b.download(got.indices()).unwrap(), want.indices());
    }
}

/// An adapter with WebGPU's default 8 storage buffers per shader stage: the attention kernels
/// reach 14 (they pick their source and output tensors at run time), so the backend does not
/// claim attention, and a call is `Unsupported` before any launch (outputs stay NaN), naming
/// the limit; GR-KAN and Gumbel (at most 6) still run.
#[test]
fn too_few_storage_buffers_per_stage_is_unsupported_before_any_launch() {
    use flashneck_core::{AttentionOps, OpKind};
    use flashneck_wgpu::{Options, WgpuBackend};
    let b = WgpuBackend::with_options(Options {
        max_storage_buffers_per_shader_stage: Some(8),
        ..Options::default()
    })
    .unwrap();
    assert_eq!(b.limits().max_storage_buffers_per_shader_stage, 8);
    // Exactly the attention ops (forward and backward, dense and sparse) are not claimed.
    let info = b.info();
    let attention = [
        OpKind::AttentionForward,
        OpKind::AttentionBackward,
        OpKind::SparseForward,
        OpKind::SparseBackward,
    ];
    for op in OpKind::ALL {
        assert_eq!(
            info.supports(op, DType::F32),
            !attention.contains(&op),
            "{op:?} with 8 storage buffers per stage"
        );
    }
    // An adapter that has the 14 the kernels reach (lavapipe, GPUs) runs all of attention.
    let full = backend();
    if full.limits().max_storage_buffers_per_shader_stage >= 14 {
        for op in attention {
            assert!(full.info().supports(op, DType::F32), "{op:?} not claimed");
        }
    }

    let p = AttentionParams::new(AttentionShape::gqa(1, 2, 1, 33, 47, 64));
    let s = &p.shape;
    let (mut rng, _) = fresh_rng();
    let x = Qkv::<f32>::random(&p, &mut rng);
    let (q, k, v) = (
        b.upload(&x.q.0).unwrap(),
        b.upload(&x.k.0).unwrap(),
        b.upload(&x.v.0).unwrap(),
    );
    let mut o = nan_buffer::<_, f32>(&b, s.o_len());
    let mut lse = nan_buffer::<_, f32>(&b, s.lse_len());
    let err = b
        .attention_forward(&p, &q, &k, &v, &mut o, &mut lse)
        .unwrap_err();
    assert!(err.is_unsupported(), "{err}");
    assert!(
        err.to_string().contains("storage buffers") && err.to_string().contains("allows 8"),
        "{err}"
    );
    assert!(b.download(&o).unwrap().iter().all(|v| v.is_nan()));
    assert!(b.download(&lse).unwrap().iter().all(|v| v.is_nan()));
}
