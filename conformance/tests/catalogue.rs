//! The catalogue of cases: every file parses, ids are unique, every rule a case names exists in
//! docs/PROTOCOL.md with the same level, and every rule of docs/PROTOCOL.md is either checked by a
//! case or listed in uncovered.toml with a reason (and not both).

use roomlab_conformance::{cases, protocol_rules, Level, UNCOVERED};
use std::collections::{BTreeMap, BTreeSet};

#[derive(serde::Deserialize)]
struct Uncovered {
    rules: BTreeMap<String, String>,
}

#[test]
fn every_rule_is_covered_or_explained() {
    let protocol =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md")).unwrap();
    let rules: BTreeMap<String, Level> = protocol_rules(&protocol).into_iter().collect();
    assert!(rules.len() > 100, "PROTOCOL.md rules were not found: {}", rules.len());
    let cases = cases().expect("the case files parse");
    let uncovered: Uncovered = toml::from_str(UNCOVERED).unwrap();
    let mut problems = Vec::new();
    let mut covered = BTreeSet::new();
    for case in &cases {
        match rules.get(&case.rule) {
            None => {
                problems.push(format!("{} names rule {} that PROTOCOL.md does not have", case.id, case.rule))
            }
            Some(level) if *level != case.level => {
                problems.push(format!("{} says {} but PROTOCOL.md says {level}", case.id, case.level))
            }
            Some(_) => {}
        }
        covered.insert(case.rule.clone());
    }
    for rule in rules.keys() {
        match (covered.contains(rule), uncovered.rules.get(rule)) {
            (false, None) => problems.push(format!("{rule}: no case, and uncovered.toml gives no reason")),
            (true, Some(_)) => {
                problems.push(format!("{rule}: has a case, so uncovered.toml must not list it"))
            }
            _ => {}
        }
    }
    for rule in uncovered.rules.keys().filter(|r| !rules.contains_key(*r)) {
        problems.push(format!("uncovered.toml lists {rule}, which PROTOCOL.md does not have"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let must = rules.values().filter(|l| **l == Level::Must).count();
    let must_covered = rules.iter().filter(|(r, l)| **l == Level::Must && covered.contains(*r)).count();
    eprintln!("{} cases; {must_covered} of {must} MUST rules covered", cases.len());
}
