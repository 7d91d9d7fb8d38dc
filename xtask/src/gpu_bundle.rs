//! SKELETON.

/// Entry point of this xtask subcommand.
pub fn run(_args: &[String]) -> Result<(), String> {
    Err("not written yet".into())
}
