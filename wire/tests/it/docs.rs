//! docs/PROTOCOL.md is the spec third parties read: it must show the code table and the
//! schema exactly as the crate has them.

use haberci_wire::markdown_table;

fn protocol_md() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md")).unwrap()
}

#[test]
fn protocol_md_shows_the_code_table() {
    let table = markdown_table();
    assert!(
        protocol_md().contains(&table),
        "docs/PROTOCOL.md's code table drifted from CODE_TABLE; paste this:\n\n{table}"
    );
}

#[test]
fn protocol_md_shows_the_schema() {
    let doc = protocol_md();
    for file in ["common", "client", "server"] {
        let path = format!(
            "{}/proto/haberci/v1/{file}.proto",
            env!("CARGO_MANIFEST_DIR")
        );
        let proto = std::fs::read_to_string(&path).unwrap();
        assert!(
            doc.contains(&format!("```protobuf\n{proto}```")),
            "docs/PROTOCOL.md appendix A differs from {path}"
        );
    }
}

#[test]
fn protocol_md_shows_the_media_json() {
    let media = serde_json::to_string(&crate::fixtures::media_message().media).unwrap();
    let line = format!("\"media\":{media}");
    assert!(
        protocol_md().contains(&line),
        "docs/PROTOCOL.md's media JSON drifted from MediaInfo's; paste this:\n\n{line}"
    );
}
