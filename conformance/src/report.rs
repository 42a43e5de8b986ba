//! Results and reports: the terminal table, JSON, JUnit XML, baselines and the exit code.

use crate::case::{Case, Level};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;

/// A case's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Verdict {
    /// The target behaved as the rule says.
    #[serde(rename = "OK")]
    Ok,
    /// A SHOULD rule was missed.
    #[serde(rename = "NON-STRICT")]
    NonStrict,
    /// The case needs a capability the target does not declare.
    #[serde(rename = "UNIMPLEMENTED")]
    Unimplemented,
    /// The target broke a MUST rule.
    #[serde(rename = "FAILED")]
    Failed,
    /// The harness or the target broke (a token command failed, a connection could not open).
    #[serde(rename = "ERROR")]
    Error,
    /// The target did not answer before a deadline.
    #[serde(rename = "TIMEOUT")]
    Timeout,
}

impl Verdict {
    /// The name reports print.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::NonStrict => "NON-STRICT",
            Verdict::Unimplemented => "UNIMPLEMENTED",
            Verdict::Failed => "FAILED",
            Verdict::Error => "ERROR",
            Verdict::Timeout => "TIMEOUT",
        }
    }

    /// Whether this result fails a run (unless a baseline expects it).
    pub fn is_bad(self) -> bool {
        matches!(self, Verdict::Failed | Verdict::Error | Verdict::Timeout)
    }
}

/// One frame (or event) of a case, as the suite saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameRecord {
    /// The connection's name in the case (`http`, `refused` and `target` for the other steps).
    pub conn: String,
    /// Sent by the suite (true) or received (false).
    pub outgoing: bool,
    /// The frame's text, or a description of a binary frame or event.
    pub text: String,
    /// Milliseconds since the case started.
    pub at_ms: u64,
}

/// One case's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseReport {
    /// The case id.
    pub id: String,
    /// The rule id.
    pub rule: String,
    /// The group.
    pub group: String,
    /// MUST or SHOULD.
    pub level: Level,
    /// The case's description.
    pub description: String,
    /// Whether its frames depend on timing.
    #[serde(default)]
    pub racy: bool,
    /// The room the case used.
    pub room: String,
    /// The result.
    pub result: Verdict,
    /// Why, when not OK.
    pub detail: String,
    /// Wall time.
    pub duration_ms: u64,
    /// The frames exchanged.
    pub frames: Vec<FrameRecord>,
}

impl CaseReport {
    /// An OK report for `case` with nothing recorded yet.
    pub fn new(case: &Case, room: String) -> CaseReport {
        CaseReport {
            id: case.id.clone(),
            rule: case.rule.clone(),
            group: case.group.clone(),
            level: case.level,
            description: case.description.clone(),
            racy: case.racy,
            room,
            result: Verdict::Ok,
            detail: String::new(),
            duration_ms: 0,
            frames: Vec::new(),
        }
    }

    /// The frames as transcript lines, with the room name replaced by `{room}` and the server's
    /// times (`createdAt`, `updatedAt`, `deleted_at`) and its open-room count (`rooms_open`, from the
    /// health probe) by 0, so that two runs print the same text.
    pub fn transcript(&self) -> String {
        let mut out = String::new();
        for frame in &self.frames {
            let arrow = if frame.outgoing { '>' } else { '<' };
            let text = redact(&frame.text.replace(&self.room, "{room}"));
            let _ = writeln!(out, "{}{arrow} {text}", frame.conn);
        }
        out
    }
}

fn redact(text: &str) -> String {
    // An HTTP answer is recorded as `<status> <body>`.
    if let Some((status, body)) = text.split_once(' ').filter(|(s, _)| s.parse::<u16>().is_ok()) {
        return format!("{status} {}", redact(body));
    }
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(text) else { return text.to_string() };
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(members) => {
                for (key, member) in members.iter_mut() {
                    if matches!(key.as_str(), "createdAt" | "updatedAt" | "deleted_at" | "rooms_open")
                        && member.is_number()
                    {
                        *member = serde_json::Value::from(0);
                    } else {
                        walk(member);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut value);
    value.to_string()
}

/// A whole run's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// The target's name.
    pub target: String,
    /// Every case run, in the suite's order.
    pub cases: Vec<CaseReport>,
    /// Wall time of the run.
    pub duration_ms: u64,
}

/// Expected results from an earlier run (its `--json` report): a case whose result equals its
/// baseline's is not a regression.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    expected: BTreeMap<String, Verdict>,
}

impl Baseline {
    /// Reads a baseline from a JSON report.
    pub fn from_json(text: &str) -> Result<Baseline, String> {
        let report: RunReport = serde_json::from_str(text).map_err(|e| format!("baseline: {e}"))?;
        Ok(Baseline { expected: report.cases.into_iter().map(|c| (c.id, c.result)).collect() })
    }

    /// The expected result of `id`, if the baseline has one.
    pub fn expected(&self, id: &str) -> Option<Verdict> {
        self.expected.get(id).copied()
    }
}

impl RunReport {
    /// Counts per result.
    pub fn counts(&self) -> BTreeMap<Verdict, usize> {
        let mut counts = BTreeMap::new();
        for case in &self.cases {
            *counts.entry(case.result).or_insert(0) += 1;
        }
        counts
    }

    /// Cases whose bad result the baseline does not expect.
    pub fn regressions<'a>(&'a self, baseline: Option<&Baseline>) -> Vec<&'a CaseReport> {
        let expected = |case: &CaseReport| baseline.and_then(|b| b.expected(&case.id)) == Some(case.result);
        self.cases.iter().filter(|case| case.result.is_bad() && !expected(case)).collect()
    }

    /// 0 when nothing regressed, 1 otherwise; a run with no case executed is a harness error (2).
    pub fn exit_code(&self, baseline: Option<&Baseline>) -> i32 {
        let executed = self.cases.iter().filter(|c| c.result != Verdict::Unimplemented).count();
        if executed == 0 {
            return 2;
        }
        i32::from(!self.regressions(baseline).is_empty())
    }

    /// The terminal report: one line per case that is not OK, then counts per group and result.
    pub fn table(&self, baseline: Option<&Baseline>) -> String {
        let mut out = String::new();
        for case in &self.cases {
            if case.result == Verdict::Ok {
                continue;
            }
            let known = match baseline.and_then(|b| b.expected(&case.id)) {
                Some(expected) if expected == case.result => " (baseline)",
                _ => "",
            };
            let _ = writeln!(out, "{:<13} {:<34} {}{known}", case.result.name(), case.id, case.detail);
        }
        let verdicts = [
            Verdict::Ok,
            Verdict::NonStrict,
            Verdict::Unimplemented,
            Verdict::Failed,
            Verdict::Error,
            Verdict::Timeout,
        ];
        let _ = write!(out, "\n{:<12}", "group");
        for verdict in verdicts {
            let _ = write!(out, " {:>13}", verdict.name());
        }
        out.push('\n');
        let groups: std::collections::BTreeSet<&str> = self.cases.iter().map(|c| c.group.as_str()).collect();
        for group in groups.into_iter().map(Some).chain([None]) {
            let _ = write!(out, "{:<12}", group.unwrap_or("all"));
            for verdict in verdicts {
                let n = self
                    .cases
                    .iter()
                    .filter(|c| group.is_none_or(|g| c.group == g) && c.result == verdict)
                    .count();
                let _ = write!(out, " {n:>13}");
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "NON-STRICT: a SHOULD rule was missed (reported, never fails the run); UNIMPLEMENTED: the target does not declare the capability"
        );
        let cases = if self.cases.len() == 1 { "case" } else { "cases" };
        let _ = writeln!(
            out,
            "\n{} {cases} against {} in {:.1} s",
            self.cases.len(),
            self.target,
            self.duration_ms as f64 / 1000.0
        );
        out
    }

    /// The JSON report (per case: id, rule, result, duration, frames).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports serialize")
    }

    /// JUnit XML: one `testsuite` per group, one `testcase` per case; FAILED and NON-STRICT are
    /// failures, ERROR and TIMEOUT errors, UNIMPLEMENTED skipped.
    pub fn to_junit(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(out, "<testsuites name=\"roomlab conformance: {}\">", xml(&self.target));
        let mut groups: BTreeMap<&str, Vec<&CaseReport>> = BTreeMap::new();
        for case in &self.cases {
            groups.entry(&case.group).or_default().push(case);
        }
        for (group, cases) in groups {
            let count = |f: fn(Verdict) -> bool| cases.iter().filter(|c| f(c.result)).count();
            let failures = count(|v| matches!(v, Verdict::Failed | Verdict::NonStrict));
            let errors = count(|v| matches!(v, Verdict::Error | Verdict::Timeout));
            let skipped = count(|v| v == Verdict::Unimplemented);
            let time: u64 = cases.iter().map(|c| c.duration_ms).sum();
            let _ = writeln!(
                out,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{:.3}\">",
                xml(group),
                cases.len(),
                time as f64 / 1000.0
            );
            for case in cases {
                junit_case(&mut out, case);
            }
            out.push_str("  </testsuite>\n");
        }
        out.push_str("</testsuites>\n");
        out
    }
}

fn junit_case(out: &mut String, case: &CaseReport) {
    let _ = write!(
        out,
        "    <testcase name=\"{}\" classname=\"{}.{}\" time=\"{:.3}\"",
        xml(&case.id),
        xml(&case.group),
        xml(&case.rule),
        case.duration_ms as f64 / 1000.0
    );
    let element = match case.result {
        Verdict::Ok => {
            out.push_str("/>\n");
            return;
        }
        Verdict::Unimplemented => "skipped",
        Verdict::Failed | Verdict::NonStrict => "failure",
        Verdict::Error | Verdict::Timeout => "error",
    };
    let _ = writeln!(out, ">");
    let _ = writeln!(
        out,
        "      <{element} type=\"{}\" message=\"{}\">{}</{element}>",
        case.result.name(),
        xml(&case.detail),
        xml(&case.transcript())
    );
    out.push_str("    </testcase>\n");
}

/// Escapes text for XML attributes and content; drops characters XML 1.0 cannot carry.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(results: &[(&str, Verdict)]) -> RunReport {
        let cases = results
            .iter()
            .map(|(id, result)| CaseReport {
                id: id.to_string(),
                rule: id.split('#').next().unwrap().to_string(),
                group: "records".into(),
                level: Level::Must,
                description: "d".into(),
                racy: false,
                room: "r-1".into(),
                result: *result,
                detail: "a < b & \"c\"".into(),
                duration_ms: 5,
                frames: vec![FrameRecord {
                    conn: "a".into(),
                    outgoing: false,
                    text: "{\"x\":\"r-1\",\"createdAt\":5}".into(),
                    at_ms: 1,
                }],
            })
            .collect();
        RunReport { target: "t".into(), cases, duration_ms: 10 }
    }

    #[test]
    fn exit_codes_and_baselines() {
        let ok = report(&[("a#1", Verdict::Ok), ("b#1", Verdict::Unimplemented)]);
        assert_eq!(ok.exit_code(None), 0);
        let none = report(&[("b#1", Verdict::Unimplemented)]);
        assert_eq!(none.exit_code(None), 2);
        let bad = report(&[("a#1", Verdict::Failed), ("c#1", Verdict::NonStrict)]);
        assert_eq!(bad.exit_code(None), 1);
        let baseline = Baseline::from_json(&bad.to_json()).unwrap();
        assert_eq!(bad.exit_code(Some(&baseline)), 0);
        let worse = report(&[("a#1", Verdict::Timeout)]);
        assert_eq!(worse.exit_code(Some(&baseline)), 1);
        assert_eq!(bad.cases[0].transcript(), "a< {\"createdAt\":0,\"x\":\"{room}\"}\n");
    }

    #[test]
    fn junit_is_escaped_and_counted() {
        let junit =
            report(&[("a#1", Verdict::Failed), ("b#1", Verdict::Ok), ("c#1", Verdict::Unimplemented)])
                .to_junit();
        assert!(
            junit.contains(
                "<testsuite name=\"records\" tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\""
            ),
            "{junit}"
        );
        assert!(junit.contains("message=\"a &lt; b &amp; &quot;c&quot;\""), "{junit}");
        assert_eq!(junit.matches("<testcase ").count(), 3);
    }
}
