//! `flashneck-bench`: every op on every backend present, against the device's limits and the
//! PyTorch peers. `cargo xtask bench` builds and runs it; `--help` lists the options.

use flashneck_benches::{cli, report};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match cli::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    match cli::run(&opts) {
        Ok(res) => {
            if !opts.quiet {
                print!("{}", report::text_table(&res));
                println!("\nreports: {}", opts.out.display());
            }
            let failed = cli::failures(&res);
            if failed > 0 {
                eprintln!("flashneck-bench: {failed} case(s) failed");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("flashneck-bench: {e}");
            std::process::exit(1);
        }
    }
}
