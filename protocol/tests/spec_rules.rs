//! docs/PROTOCOL.md: every rule has a unique, well-formed stable id, a level, and a source quote or a
//! stated decision; every error code is documented.

use roomlab_protocol::ErrorCode;

fn spec() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    std::fs::read_to_string(path).expect("docs/PROTOCOL.md")
}

/// The rule bullets: lines starting `- **id** (LEVEL` and the id they declare.
fn rules(spec: &str) -> Vec<(String, String)> {
    let mut rules = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in spec.lines() {
        if let Some(rest) = line.strip_prefix("- **") {
            if let Some((id, tail)) = rest.split_once("** (") {
                if tail.starts_with("MUST") || tail.starts_with("SHOULD") {
                    rules.extend(current.take());
                    current = Some((id.to_string(), line.to_string()));
                    continue;
                }
            }
        }
        match &mut current {
            Some((_, text)) if line.starts_with("  ") => {
                text.push(' ');
                text.push_str(line.trim());
            }
            _ => rules.extend(current.take()),
        }
    }
    rules.extend(current);
    rules
}

#[test]
fn rule_ids_are_unique_and_well_formed() {
    let spec = spec();
    let rules = rules(&spec);
    assert!(rules.len() >= 100, "only {} rules found", rules.len());
    let mut seen = std::collections::BTreeSet::new();
    let mut unsourced = Vec::new();
    for (id, text) in &rules {
        assert!(seen.insert(id.clone()), "rule id {id} appears twice");
        assert!(
            id.split('.').count() >= 2 && id.chars().all(|c| c.is_ascii_lowercase() || c == '.' || c == '-'),
            "rule id {id} is not area.topic[.rule]"
        );
        let sourced = ["R: ", "D: ", "S: ", "D names", "roomlab decision", "R's", "S's"]
            .iter()
            .any(|marker| text.contains(marker));
        if !sourced {
            unsourced.push(id.as_str());
        }
    }
    assert!(unsourced.is_empty(), "rules citing no source and stating no decision: {unsourced:?}");
}

#[test]
fn every_error_code_is_documented() {
    let spec = spec();
    for code in ErrorCode::ALL {
        assert!(spec.contains(&format!("| `{code}` |")), "error code {code} has no row in the spec");
    }
}
