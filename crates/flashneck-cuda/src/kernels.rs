//! The kernel sources, embedded at build time, and which source holds which kernel.
//!
//! Each `.cu` file names its kernels with `FLASHNECK_EXPORT(name)` lines (the emulator's build
//! script reads the same lines), so the table of kernels is derived from the sources themselves.

/// Every `.cu` file of `kernels/cuda`, by file name.
pub const SOURCES: &[(&str, &str)] = &[
    ("grkan.cu", include_str!("../../../kernels/cuda/grkan.cu")),
    ("gumbel.cu", include_str!("../../../kernels/cuda/gumbel.cu")),
    (
        "attention.cu",
        include_str!("../../../kernels/cuda/attention.cu"),
    ),
    ("topk.cu", include_str!("../../../kernels/cuda/topk.cu")),
    (
        "attention_bwd.cu",
        include_str!("../../../kernels/cuda/attention_bwd.cu"),
    ),
];

/// The kernels a source exports, in file order.
pub fn exported(source: &str) -> impl Iterator<Item = &str> {
    source.lines().filter_map(|l| {
        l.trim()
            .strip_prefix("FLASHNECK_EXPORT(")
            .and_then(|r| r.strip_suffix(')'))
            .map(str::trim)
    })
}

/// The index in [`SOURCES`] of the file that exports `kernel`.
pub fn source_of(kernel: &str) -> Option<usize> {
    SOURCES
        .iter()
        .position(|(_, src)| exported(src).any(|k| k == kernel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_the_host_launches_is_exported_once() {
        for k in [
            "grkan_forward_f32",
            "grkan_backward_bf16",
            "grkan_reduce",
            "gumbel_forward_warp_f16",
            "gumbel_backward_block_f32",
            "gumbel_noise",
            "attention_forward_f32_d64",
            "attention_forward_bf16_d128",
            "topk_pool_f16",
            "topk_score",
            "topk_select",
            "attn_bwd_dkdv_simt_f32_d128",
        ] {
            assert!(source_of(k).is_some(), "{k} is not exported");
        }
        let all: Vec<&str> = SOURCES.iter().flat_map(|(_, s)| exported(s)).collect();
        let mut dedup = all.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(all.len(), dedup.len(), "a kernel is exported twice");
        assert_eq!(source_of("no_such_kernel"), None);
    }
}
