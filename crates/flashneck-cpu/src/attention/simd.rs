//! The attention tasks run through the crate's one runtime dispatch ([`crate::simd`]): this
//! module only names it for `forward.rs` and `backward.rs`.

pub(super) use crate::simd::{Isa, Task};
