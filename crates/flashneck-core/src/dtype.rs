//! Element types. Tensors hold `f32`, `f16` or `bf16`; arithmetic is always f32 (SPEC §0).

use half::{bf16, f16};
use std::fmt;

/// The floating-point element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// All element types, in a fixed order (used by tests and benches to iterate).
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Size of one element in bytes.
    pub const fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Lower-case name as used on the command line and in reports (`f32`, `f16`, `bf16`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Parse a name produced by [`DType::name`].
    pub fn from_name(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }

    /// SPEC §0 tolerance for elementwise ops, relative to `max(1, max|ref|)`.
    pub const fn elementwise_tolerance(self) -> f64 {
        match self {
            DType::F32 => 2e-5,
            DType::F16 => 2e-3,
            DType::BF16 => 1.6e-2,
        }
    }

    /// SPEC §0 tolerance for attention and long sums (GR-KAN coefficient gradients).
    pub const fn reduction_tolerance(self) -> f64 {
        match self {
            DType::F32 => 1e-4,
            DType::F16 => 2e-3,
            DType::BF16 => 1.6e-2,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Anything a device buffer may hold: the three element types and `u32` (layout indices).
pub trait Scalar: bytemuck::Pod + Copy + Send + Sync + fmt::Debug + PartialEq + 'static {
    /// Short name, for error messages.
    const NAME: &'static str;
}

impl Scalar for f32 {
    const NAME: &'static str = "f32";
}
impl Scalar for f16 {
    const NAME: &'static str = "f16";
}
impl Scalar for bf16 {
    const NAME: &'static str = "bf16";
}
impl Scalar for u32 {
    const NAME: &'static str = "u32";
}

/// A floating-point tensor element. Conversions round to nearest even.
pub trait Element: Scalar {
    const DTYPE: DType;
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
    fn from_f64(v: f64) -> Self {
        Self::from_f32(v as f32)
    }
    fn to_f64(self) -> f64 {
        self.to_f32() as f64
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_to_nearest_even() {
        // 1 + 2^-11 is exactly half-way between two f16 values: ties go to even (1.0).
        assert_eq!(
            <f16 as Element>::from_f32(1.0 + 2f32.powi(-11)).to_f32(),
            1.0
        );
        // 1 + 3·2^-11 is half-way too; the even neighbour is 1 + 2^-9.
        assert_eq!(
            <f16 as Element>::from_f32(1.0 + 3.0 * 2f32.powi(-11)).to_f32(),
            1.0 + 2f32.powi(-9)
        );
        assert_eq!(
            <bf16 as Element>::from_f32(1.0 + 2f32.powi(-8)).to_f32(),
            1.0
        );
        assert_eq!(DType::from_name("bf16"), Some(DType::BF16));
        assert_eq!(DType::from_name("f64"), None);
    }
}
