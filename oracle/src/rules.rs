//! The rules of docs/PROTOCOL.md, read from the spec itself: every `- **id** (LEVEL` bullet. The
//! simulation reports, per rule, how often the oracle exercised it; this list says which rules
//! there are to exercise.

/// The spec the oracle is written from.
const PROTOCOL: &str = include_str!("../../docs/PROTOCOL.md");

/// One rule of docs/PROTOCOL.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The stable id, e.g. `docs.create`.
    pub id: String,
    /// MUST (true) or SHOULD (false).
    pub must: bool,
    /// The rule binds clients (its level reads `MUST, client`, or it is in §21), not servers.
    pub binds_clients: bool,
}

/// Every rule of docs/PROTOCOL.md, in the order the spec states them.
pub fn spec_rules() -> Vec<Rule> {
    PROTOCOL.lines().filter_map(rule_of_line).collect()
}

fn rule_of_line(line: &str) -> Option<Rule> {
    let rest = line.strip_prefix("- **")?;
    let (id, tail) = rest.split_once("** (")?;
    let level = tail.split(')').next()?;
    let must = level.starts_with("MUST");
    if !must && !level.starts_with("SHOULD") {
        return None;
    }
    let binds_clients = level.contains("client") || id.starts_with("client.");
    Some(Rule { id: id.to_string(), must, binds_clients })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_lists_its_rules_with_levels() {
        let rules = spec_rules();
        assert!(rules.len() > 100, "only {} rules", rules.len());
        let find = |id: &str| rules.iter().find(|rule| rule.id == id).cloned();
        assert_eq!(find("docs.create").map(|r| (r.must, r.binds_clients)), Some((true, false)));
        assert_eq!(find("conn.shutdown").map(|r| r.must), Some(false));
        assert_eq!(find("bucket.fallback").map(|r| r.binds_clients), Some(true));
        assert_eq!(find("client.reconnect.replay").map(|r| r.binds_clients), Some(true));
    }
}
