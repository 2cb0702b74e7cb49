//! Regenerates `src/gen/` from `agent.proto` with a vendored protoc.
//! `protogen --check` exits non-zero when the committed code differs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const GENERATED: &str = "ferry.agent.v1.rs";

/// This crate's directory, from `cargo run`'s environment: a path compiled
/// in may name another checkout that shares the build cache.
fn crate_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn generate(out_dir: &Path) -> std::io::Result<()> {
    let crate_dir = crate_dir();
    let protoc = protoc_bin_vendored::protoc_bin_path().map_err(std::io::Error::other)?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    // Chunks are decoded without copying.
    config.bytes(["."]);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .out_dir(out_dir)
        .compile_with_config(
            config,
            &[crate_dir.join("agent.proto")],
            &[crate_dir.to_path_buf()],
        )
}

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => {
            eprintln!("protogen: unknown argument {other:?}; use no argument or --check");
            return ExitCode::FAILURE;
        }
    };
    let committed = crate_dir().join("src/gen").join(GENERATED);
    let scratch = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(err) => {
            eprintln!("protogen: creating a temporary directory: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(err) = generate(scratch.path()) {
        eprintln!("protogen: compiling agent.proto: {err}");
        return ExitCode::FAILURE;
    }
    let fresh = match std::fs::read_to_string(scratch.path().join(GENERATED)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("protogen: reading the generated {GENERATED}: {err}");
            return ExitCode::FAILURE;
        }
    };
    if check {
        return match std::fs::read_to_string(&committed) {
            Ok(old) if old == fresh => ExitCode::SUCCESS,
            Ok(_) => {
                eprintln!(
                    "protogen: {} is out of date; run `cargo run -p ferry-proto --bin protogen`",
                    committed.display()
                );
                ExitCode::FAILURE
            }
            Err(err) => {
                eprintln!("protogen: reading {}: {err}", committed.display());
                ExitCode::FAILURE
            }
        };
    }
    match std::fs::write(&committed, fresh) {
        Ok(()) => {
            eprintln!("protogen: wrote {}", committed.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("protogen: writing {}: {err}", committed.display());
            ExitCode::FAILURE
        }
    }
}
