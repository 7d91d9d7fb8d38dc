//! SKELETON.
mod gpu_bundle;
mod kernels;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("kernels") => kernels::run(&args[1..]),
        Some("gpu-bundle") => gpu_bundle::run(&args[1..]),
        _ => Err("usage: cargo xtask <test|bench|kernels|gpu-bundle>".into()),
    };
    if let Err(e) = r {
        eprintln!("xtask: {e}");
        std::process::exit(1);
    }
}
