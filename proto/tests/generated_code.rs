//! The committed generated code must match agent.proto.

#[test]
fn committed_code_matches_agent_proto() {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_protogen"))
        .arg("--check")
        .status()
        .expect("protogen runs");
    assert!(
        status.success(),
        "src/gen is out of date; run `cargo run -p ferry-proto --bin protogen` and commit the result"
    );
}
