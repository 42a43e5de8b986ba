//! The target adapter: how the suite reaches an implementation, as small as Maelstrom's contract.
//!
//! ```toml
//! name = "my-server"
//! ws_url = "ws://127.0.0.1:8787/ws/{room}?token={token}"
//! http_base = "http://127.0.0.1:8787"
//! yjs_url = "ws://127.0.0.1:8787/yjs/{room}/{doc}/{field}?token={token}"  # for y-websocket
//! capabilities = ["core", "lists", "staging", "schemas", "teams", "buckets", "assets"]
//! timeout_multiplier = 1.0
//!
//! [token]
//! secret = "shared HS256 secret"       # or:
//! # command = "mint --room {room} --user {user} --role {role} --plan {plan} --addons {addons} --exp {exp}"
//!
//! [restart]                            # optional: enables the durability cases
//! command = "systemctl restart my-server"
//!
//! [fail_commit]                        # optional: the next commit in {room} fails (disk error)
//! command = "my-server-ctl fail-next-commit {room}"
//! ```
//!
//! `ws_url`, `http_base` and `[token]` are needed by every capability but `y-websocket`; a stock
//! y-websocket server needs only `name`, `yjs_url` (without `{token}`) and
//! `capabilities = ["y-websocket"]`.

use serde::Deserialize;
use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

/// Every capability a target may declare, with what declaring it promises.
pub const CAPABILITIES: &[(&str, &str)] = &[
    ("core", "connection, documents, queries, document subscriptions, trash, guards, idempotency"),
    ("lists", "ordered lists inside documents (list_insert / list_move / list_update / list_remove)"),
    ("staging", "staged sessions (stage_put / stage_commit / stage_discard, sys:session)"),
    ("schemas", "sys:schema:<type> documents, role and owner access, auto fields"),
    ("teams", "users, teams, members and invites (sys:users, sys:teams, user_set_role)"),
    ("buckets", "JSON buckets with contracts, versions, subscriptions and deletion"),
    ("assets", "asset buckets over the WebSocket, and HTTP upload, download, list and delete"),
    ("quota-small", "quotas configured small: free 1000 bytes, pro 2000 bytes, 1000 more per add-on"),
    ("yjs", "Yjs binary frames on the main socket"),
    ("y-websocket", "a y-websocket endpoint per document field (needs `yjs_url`)"),
    ("restart", "a restart command (declared by the [restart] section)"),
    ("fail-commit", "a command that fails a room's next commit (declared by the [fail_commit] section)"),
];

/// Capabilities a target gets from a section of its file, never from its `capabilities` list.
const DECLARED_BY_SECTIONS: &[&str] = &["restart", "fail-commit"];

/// How the suite gets a token for (room, user, role).
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// The shared HS256 secret; the suite mints tokens itself.
    Secret(Vec<u8>),
    /// A shell command that prints a token; `{room}`, `{user}`, `{role}`, `{plan}`, `{addons}` and
    /// `{exp}` (Unix seconds) are filled in.
    Command(String),
    /// The target takes no tokens (a stock y-websocket server).
    None,
}

/// An in-process hook of a target that lives in the suite's own process; its argument is the
/// case's room.
pub type TargetHook =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Something the suite asks of a target outside the protocol: a restart (durability cases; the
/// suite then waits for `/v1/health`) or a failed commit (mutation.replay.internal-not-remembered).
#[derive(Clone)]
pub enum TargetAction {
    /// A shell command; `{room}` is filled in with the case's room.
    Command(String),
    /// An in-process hook (the embedded target).
    Hook(TargetHook),
}

impl TargetAction {
    /// Carries the action out for `room`.
    pub(crate) async fn run(&self, room: &str) -> Result<(), String> {
        match self {
            TargetAction::Command(command) => {
                crate::wire::shell(&command.replace("{room}", room)).await.map(drop)
            }
            TargetAction::Hook(hook) => hook(room.to_string()).await,
        }
    }
}

impl std::fmt::Debug for TargetAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetAction::Command(command) => write!(f, "Command({command:?})"),
            TargetAction::Hook(_) => f.write_str("Hook"),
        }
    }
}

/// An implementation under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// A name for reports.
    pub name: String,
    /// The WebSocket URL template, with `{room}` and `{token}` (empty for a y-websocket-only
    /// target).
    pub ws_url: String,
    /// The HTTP base URL (`http://host:port`; empty for a y-websocket-only target).
    pub http_base: String,
    /// The y-websocket endpoint's URL, with `{room}`, `{doc}`, `{field}` and `{token}`.
    pub yjs_url: Option<String>,
    /// Where tokens come from.
    pub tokens: TokenSource,
    /// How to restart it, if it can be.
    pub restart: Option<TargetAction>,
    /// How to make its next commit in a room fail, if it can be.
    pub fail_commit: Option<TargetAction>,
    /// What it implements.
    pub capabilities: BTreeSet<String>,
    /// Multiplies every deadline (2 s by default per step).
    pub timeout_multiplier: f64,
}

/// Why a target file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a valid target.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    name: String,
    ws_url: Option<String>,
    http_base: Option<String>,
    yjs_url: Option<String>,
    capabilities: Vec<String>,
    #[serde(default = "one")]
    timeout_multiplier: f64,
    token: Option<TokenFile>,
    restart: Option<CommandFile>,
    fail_commit: Option<CommandFile>,
}

fn one() -> f64 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    secret: Option<String>,
    command: Option<String>,
}

/// A section holding one shell command (`[restart]`, `[fail_commit]`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandFile {
    command: String,
}

impl Target {
    /// A roomlab server at `address` (`host:port`) whose tokens are signed with `secret`: its
    /// `/ws/{room}` endpoint and HTTP base, no restart, no capabilities declared, deadlines as
    /// they are.
    pub fn roomlab(name: impl Into<String>, address: impl std::fmt::Display, secret: &[u8]) -> Target {
        Target {
            name: name.into(),
            ws_url: format!("ws://{address}/ws/{{room}}?token={{token}}"),
            http_base: format!("http://{address}"),
            yjs_url: Some(format!("ws://{address}/yjs/{{room}}/{{doc}}/{{field}}?token={{token}}")),
            tokens: TokenSource::Secret(secret.to_vec()),
            restart: None,
            fail_commit: None,
            capabilities: Default::default(),
            timeout_multiplier: 1.0,
        }
    }

    /// Reads a target file.
    pub fn load(path: &Path) -> Result<Target, TargetError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| TargetError::Read { path: name.clone(), source })?;
        Target::parse(&text).map_err(|message| TargetError::Invalid { path: name, message })
    }

    /// Parses the text of a target file.
    pub fn parse(text: &str) -> Result<Target, String> {
        let file: TargetFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut capabilities = BTreeSet::new();
        for capability in &file.capabilities {
            let known = CAPABILITIES.iter().any(|(known, _)| known == capability);
            if !known || DECLARED_BY_SECTIONS.contains(&capability.as_str()) {
                return Err(format!(
                    "unknown capability {capability:?} (see `roomlab conform --capabilities`)"
                ));
            }
            capabilities.insert(capability.clone());
        }
        let tokens = match file.token.map(|t| (t.secret, t.command)) {
            None => TokenSource::None,
            Some((Some(secret), None)) => TokenSource::Secret(secret.into_bytes()),
            Some((None, Some(command))) => TokenSource::Command(command),
            Some(_) => return Err("[token] needs exactly one of `secret` and `command`".into()),
        };
        // Everything but the stock y-websocket protocol is spoken on the main socket and HTTP.
        let main = capabilities.iter().any(|c| c != "y-websocket");
        let needs = |what: &str, present: bool| match !main || present {
            true => Ok(()),
            false => Err(format!("{what} is needed by the capabilities {capabilities:?}")),
        };
        needs("ws_url", file.ws_url.is_some())?;
        needs("http_base", file.http_base.is_some())?;
        needs("[token]", !matches!(tokens, TokenSource::None))?;
        let ws_url = file.ws_url.unwrap_or_default();
        if main && (!ws_url.contains("{room}") || !ws_url.contains("{token}")) {
            return Err("ws_url must contain {room} and {token}".into());
        }
        let placeholders = ["{room}", "{doc}", "{field}"];
        if file.yjs_url.as_ref().is_some_and(|url| !placeholders.iter().all(|p| url.contains(p))) {
            return Err("yjs_url must contain {room}, {doc} and {field} (and {token} if it takes one)".into());
        }
        let token_in_url = file.yjs_url.as_ref().is_some_and(|url| url.contains("{token}"));
        if token_in_url && matches!(tokens, TokenSource::None) {
            return Err("yjs_url takes a {token}, so the target needs [token]".into());
        }
        if capabilities.contains("y-websocket") && file.yjs_url.is_none() {
            return Err("the y-websocket capability needs yjs_url".into());
        }
        if !(file.timeout_multiplier > 0.0 && file.timeout_multiplier <= 100.0) {
            return Err("timeout_multiplier must be in (0, 100]".into());
        }
        let restart = file.restart.map(|r| TargetAction::Command(r.command));
        if file.fail_commit.as_ref().is_some_and(|f| !f.command.contains("{room}")) {
            return Err("[fail_commit] command must contain {room}".into());
        }
        let fail_commit = file.fail_commit.map(|f| TargetAction::Command(f.command));
        let mut target = Target {
            name: file.name,
            ws_url,
            http_base: file.http_base.unwrap_or_default().trim_end_matches('/').to_string(),
            yjs_url: file.yjs_url,
            tokens,
            restart: None,
            fail_commit: None,
            capabilities,
            timeout_multiplier: file.timeout_multiplier,
        };
        target.set_restart(restart);
        target.set_fail_commit(fail_commit);
        Ok(target)
    }

    /// Sets (or clears) how to fail a room's next commit, and the `fail-commit` capability with it.
    pub fn set_fail_commit(&mut self, fail_commit: Option<TargetAction>) {
        self.declare("fail-commit", fail_commit.is_some());
        self.fail_commit = fail_commit;
    }

    /// Sets (or clears) how to restart the target, and the `restart` capability with it.
    pub fn set_restart(&mut self, restart: Option<TargetAction>) {
        self.declare("restart", restart.is_some());
        self.restart = restart;
    }

    /// Declares (or withdraws) a capability that comes with an action.
    fn declare(&mut self, capability: &str, declared: bool) {
        if declared {
            self.capabilities.insert(capability.to_string());
        } else {
            self.capabilities.remove(capability);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &str) {
        let action = |name: &str, action: &Option<TargetAction>| match action {
            Some(action) => format!("Some({name}::{action:?})"),
            None => "None".to_string(),
        };
        let got = match Target::parse(text) {
            Ok(target) => format!(
                "{} {:?} {} {}",
                target.name,
                target.capabilities,
                action("Restart", &target.restart),
                action("FailCommit", &target.fail_commit)
            ),
            Err(error) => error,
        };
        assert_eq!(got, expected);
    }

    #[test]
    fn target_files() {
        let base = "name = \"t\"\nws_url = \"ws://h/ws/{room}?token={token}\"\nhttp_base = \"http://h/\"\n";
        check(
            &format!(
                "{base}capabilities = [\"core\"]\n[token]\nsecret = \"s\"\n[restart]\ncommand = \"x\"\n"
            ),
            r#"t {"core", "restart"} Some(Restart::Command("x")) None"#,
        );
        check(
            &format!(
                "{base}capabilities = []\n[token]\nsecret = \"s\"\n[fail_commit]\ncommand = \"f {{room}}\"\n"
            ),
            r#"t {"fail-commit"} None Some(FailCommit::Command("f {room}"))"#,
        );
        check(
            &format!("{base}capabilities = []\n[token]\nsecret = \"s\"\n[fail_commit]\ncommand = \"f\"\n"),
            "[fail_commit] command must contain {room}",
        );
        check(
            &format!("{base}capabilities = [\"fail-commit\"]\n[token]\nsecret = \"s\"\n"),
            r#"unknown capability "fail-commit" (see `roomlab conform --capabilities`)"#,
        );
        check(
            &format!("{base}capabilities = [\"core\", \"telepathy\"]\n[token]\nsecret = \"s\"\n"),
            r#"unknown capability "telepathy" (see `roomlab conform --capabilities`)"#,
        );
        check(
            &format!("{base}capabilities = []\n[token]\n"),
            "[token] needs exactly one of `secret` and `command`",
        );
        let yjs = "name = \"y\"\nyjs_url = \"ws://h/{room}/{doc}/{field}\"\n";
        check(&format!("{yjs}capabilities = [\"y-websocket\"]\n"), r#"y {"y-websocket"} None None"#);
        check(
            &format!("{yjs}capabilities = [\"y-websocket\", \"core\"]\n"),
            r#"ws_url is needed by the capabilities {"core", "y-websocket"}"#,
        );
        check(
            "name = \"y\"\nyjs_url = \"ws://h/{room}/{doc}/{field}?t={token}\"\ncapabilities = [\"y-websocket\"]\n",
            "yjs_url takes a {token}, so the target needs [token]",
        );
        check(
            "name = \"y\"\nyjs_url = \"ws://h/{doc}\"\ncapabilities = [\"y-websocket\"]\n",
            "yjs_url must contain {room}, {doc} and {field} (and {token} if it takes one)",
        );
    }
}
