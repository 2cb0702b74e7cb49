//! The CRD under charts/ is generated; this fails when someone edits the
//! types without regenerating it (or edits the YAML by hand).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

#[test]
fn committed_crd_matches_the_types() {
    let generated = ferry_api::crd_yaml().expect("CRD serializes");
    // At run time: the build may come from another checkout sharing the cache.
    let path = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            std::path::PathBuf::from,
        )
        .join("..")
        .join(ferry_api::CRD_FILE);
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    assert!(
        committed == generated,
        "{} differs from the generated CRD; run `cargo run -p ferry-api --bin crdgen` and commit the result",
        path.display()
    );
}
