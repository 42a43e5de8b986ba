//! How often each rule branch was exercised: a rule id for what it decided, and `rule:code` for
//! each refusal.

use crate::{Oracle, Output};
use roomlab_protocol::ServerMessage;
use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

/// `rule:branch` as a `&'static str`, each distinct text leaked once: there are only as many as
/// rules times codes, and the coverage map keeps static keys.
fn interned(text: String) -> &'static str {
    static TABLE: OnceLock<Mutex<BTreeSet<&'static str>>> = OnceLock::new();
    let mut table = TABLE.get_or_init(Mutex::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(known) = table.get(text.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(text.into_boxed_str());
    table.insert(leaked);
    leaked
}

impl Oracle {
    /// Counts what the outputs exercised and hands them back.
    pub(crate) fn counted(&mut self, outputs: Vec<Output>) -> Vec<Output> {
        for output in &outputs {
            match output {
                Output::Send { message, rule, .. } => self.count_message(rule, message),
                Output::Yjs { rule, .. } => self.cover(rule),
                Output::Close { code, rule, .. } => self.cover_branch(rule, &format!("close {code}")),
            }
        }
        outputs
    }

    /// Counts a message decided by `rule`: a refusal as `rule:code`, anything else as `rule`.
    pub(crate) fn count_message(&mut self, rule: &'static str, message: &ServerMessage) {
        match message {
            ServerMessage::Error(body) => self.cover_branch(rule, body.code.as_str()),
            _ => self.cover(rule),
        }
    }

    /// Counts one exercise of `key`.
    pub(crate) fn cover(&mut self, key: &'static str) {
        *self.coverage.entry(key).or_default() += 1;
    }

    /// Counts one exercise of `rule:branch`.
    pub(crate) fn cover_branch(&mut self, rule: &'static str, branch: &str) {
        let key = interned(format!("{rule}:{branch}"));
        self.cover(key);
    }
}
