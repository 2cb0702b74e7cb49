//! Writes the CheckpointPolicy CustomResourceDefinition into the chart.
//!
//! `crdgen` rewrites `charts/ferry/crds/…yaml`; `crdgen --check` exits
//! non-zero when the committed file differs from what the types generate;
//! `crdgen --stdout` prints it.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mode = std::env::args().nth(1);
    let yaml = match ferry_api::crd_yaml() {
        Ok(yaml) => yaml,
        Err(err) => {
            eprintln!("crdgen: {err}");
            return ExitCode::FAILURE;
        }
    };
    // From `cargo run`'s environment: a path compiled in may name another
    // checkout that shares the build cache.
    let path = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("..")
        .join(ferry_api::CRD_FILE);
    match mode.as_deref() {
        Some("--stdout") => {
            #[allow(clippy::print_stdout)] // printing is this mode's purpose
            {
                print!("{yaml}");
            }
            ExitCode::SUCCESS
        }
        Some("--check") => match std::fs::read_to_string(&path) {
            Ok(committed) if committed == yaml => ExitCode::SUCCESS,
            Ok(_) => {
                eprintln!(
                    "crdgen: {} is out of date; run `cargo run -p ferry-api --bin crdgen`",
                    path.display()
                );
                ExitCode::FAILURE
            }
            Err(err) => {
                eprintln!("crdgen: reading {}: {err}", path.display());
                ExitCode::FAILURE
            }
        },
        None => match std::fs::write(&path, yaml) {
            Ok(()) => {
                eprintln!("crdgen: wrote {}", path.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("crdgen: writing {}: {err}", path.display());
                ExitCode::FAILURE
            }
        },
        Some(other) => {
            eprintln!("crdgen: unknown argument {other:?}; use no argument, --check or --stdout");
            ExitCode::FAILURE
        }
    }
}
