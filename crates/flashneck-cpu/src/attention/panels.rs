//! f32 copies of the inputs in the layouts the tile products read, made once per call
//! (`O(L·D)` memory; they also convert f16/bf16 to f32 once instead of once per tile).
//!
//! Two layouts, both zero-padded so that every tile is a whole `64 × NR·k` block and padded
//! rows/columns contribute exact zeros:
//! - [`rows`]: `[heads, rows_p, dim_p]` row-major (`rows_p` a multiple of 64, `dim_p` of `NR`);
//! - [`blocks_t`]: `[heads, blocks, dim, 64]`: each 64-row block transposed, so that a product
//!   with it runs along 64 contiguous rows of the original.

use super::tile::NR;
use flashneck_core::{BLOCK, Element};
use rayon::prelude::*;

/// `dim` rounded up to a whole number of micro-kernel panels.
pub fn pad_dim(dim: usize) -> usize {
    dim.div_ceil(NR) * NR
}

/// `len` rounded up to whole blocks of 64.
pub fn pad_len(len: usize) -> usize {
    len.div_ceil(BLOCK) * BLOCK
}

/// `mul · x` for `x [heads, len, dim]`, as `[heads, pad_len(len), pad_dim(dim)]` f32.
pub fn rows<T: Element>(x: &[T], heads: usize, len: usize, dim: usize, mul: f32) -> Vec<f32> {
    let (len_p, dim_p) = (pad_len(len), pad_dim(dim));
    let mut out = vec![0.0f32; heads * len_p * dim_p];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(len_p * dim_p)
        .zip(x.par_chunks(len * dim))
        .for_each(|(dst, src)| {
            for (d_row, s_row) in dst.chunks_exact_mut(dim_p).zip(src.chunks_exact(dim)) {
                for (d, s) in d_row.iter_mut().zip(s_row) {
                    *d = mul * s.to_f32();
                }
            }
        });
    out
}

/// `mul · x` for `x [heads, len, dim]`, as `[heads, ceil(len/64), dim, 64]` f32 (each block of
/// 64 rows transposed).
pub fn blocks_t<T: Element>(x: &[T], heads: usize, len: usize, dim: usize, mul: f32) -> Vec<f32> {
    let nb = len.div_ceil(BLOCK);
    let mut out = vec![0.0f32; heads * nb * dim * BLOCK];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(dim * BLOCK)
        .enumerate()
        .for_each(|(hb, dst)| {
            let (h, b) = (hb / nb, hb % nb);
            let src = &x[h * len * dim..(h + 1) * len * dim];
            for r in b * BLOCK..((b + 1) * BLOCK).min(len) {
                for (c, s) in src[r * dim..(r + 1) * dim].iter().enumerate() {
                    dst[c * BLOCK + r - b * BLOCK] = mul * s.to_f32();
                }
            }
        });
    out
}
