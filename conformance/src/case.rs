//! Cases as data: the `.cases` text format, parsed once into typed steps.
//!
//! A file holds cases; a case starts with a header line and its steps follow, one per line:
//!
//! ```text
//! case docs.create#1 docs.create MUST needs=core
//!   about: create makes a live document owned by the caller at a new sequence
//!   connect a u1 member
//!   a> {"type":"mutate","mid":1,"op":"create","doc":"t1","doc_type":"tasks","data":{}}
//!   a< {"type":"ack","mid":1,"seq":"$s"}
//! ```
//!
//! Steps (`A` names a connection of the case):
//! - `connect A USER ROLE [plan=free|pro] [addons=N] [client=ID] [room=SUFFIX] [hello=no]`: open a
//!   WebSocket with a token for (room, user, role), send `hello` and expect `welcome`.
//! - `A> JSON`: send a frame; `"$name"` strings are replaced by bound values (`"$name+1"` adds).
//! - `A>raw TEXT`: send TEXT as a text frame, as is. `A>oversize`: a frame one byte over the
//!   `frame_bytes_max` the server announced. `A>not-utf8`: a text frame whose bytes are not UTF-8.
//! - `A< PATTERN`: a frame matching PATTERN arrives before the deadline (earlier frames that do not
//!   match stay for later steps). `A<< PATTERN`: the next unread frame matches.
//!   Either may end with ` keep=NAME`, which keeps the matched frame's text under NAME.
//! - `A< same=NAME` / `A<< same=NAME`: a frame byte for byte equal to the one kept as NAME arrives.
//! - `A!< PATTERN`: no unread frame received so far matches (place it after a barrier frame).
//! - `A closed CODE[|CODE...]`: the server closes the connection with one of these codes.
//! - `A close`: the client closes the connection.
//! - `A>yjs DOC FIELD step1|step2|update HEX` and `A<yjs DOC FIELD KIND [contains=TEXT] [lacks=TEXT]`,
//!   `A!<yjs DOC FIELD KIND`: Yjs binary frames on the main socket, or, on a connection `yconnect`
//!   opened, plain y-protocols messages (DOC and FIELD must be the connection's).
//! - `yconnect A DOC FIELD USER ROLE`: open the target's y-websocket endpoint for one field (what a
//!   stock `y-websocket` client opens), with a token for (room, user, role); no hello.
//! - `refused USER ROLE missing|forged|expired|wrong-room`: the upgrade is refused with HTTP 401 or
//!   the socket closed with 4001.
//! - `http METHOD PATH [as=USER:ROLE] [type=CONTENT-TYPE] [body=TEXT] -> STATUS [PATTERN]`; `{room}`
//!   in PATH is the case's room.
//! - `A pause` / `A resume`: the suite stops reading connection A (its frames wait in the kernel's
//!   socket buffers and then in the server's queue), and starts again.
//! - `A>>COUNT JSON`: send COUNT frames (a number or `$name[+N]`), binding `i` to 1, 2, ... COUNT in
//!   each (`"$i"`, `"$i+N"`, and `"$text:i"` for the number as a string); each frame carries a `mid`,
//!   and every one must be acknowledged (`ack` with that `mid`), at most 32 unanswered at a time.
//! - `restart [open]`: restart the target (durability cases); with `open` the case's connections
//!   stay open through it, to see how the server closes them.
//! - `fail-commit`: the target's next commit in the case's room fails as if its disk refused it.
//!
//! Lines starting with `//` are comments.

use serde_json::Value;
use std::fmt;

/// MUST or SHOULD, as docs/PROTOCOL.md levels the rule a case checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// A rule every implementation follows.
    Must,
    /// A recommendation; missing it is NON-STRICT, not FAILED.
    Should,
}

/// One conformance case.
#[derive(Debug, Clone)]
pub struct Case {
    /// The stable id, `<rule>#<n>`.
    pub id: String,
    /// The rule id of docs/PROTOCOL.md the case checks.
    pub rule: String,
    /// The rule's level.
    pub level: Level,
    /// The group (the case file's name): records, documents, storage, yjs, connection.
    pub group: String,
    /// Capabilities the target must declare for the case to run.
    pub needs: Vec<String>,
    /// What the case checks, in a sentence.
    pub description: String,
    /// Its frames depend on timing (concurrent writers), so transcripts of it differ run to run.
    pub racy: bool,
    /// It loads the target heavily (thousands of frames), so it runs alone, after the others.
    pub alone: bool,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// A token fault for `refused` steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    /// No token at all.
    Missing,
    /// A token signed with another secret.
    Forged,
    /// A token whose `exp` has passed.
    Expired,
    /// A token for another room.
    WrongRoom,
}

/// Which y-protocols sync message a Yjs step sends or expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YjsKind {
    /// Sync step 1 (a state vector).
    Step1,
    /// Sync step 2 (an update answering a state vector).
    Step2,
    /// An update.
    Update,
}

/// Options of a `connect` step.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    /// The connection's name in the case.
    pub name: String,
    /// The user id.
    pub user: String,
    /// `viewer`, `member` or `admin`.
    pub role: String,
    /// `free` or `pro`.
    pub plan: String,
    /// Storage add-ons.
    pub addons: u32,
    /// The client id sent in `hello`.
    pub client: String,
    /// A suffix naming a second room of the case (`room=b`).
    pub room: Option<String>,
    /// Send `hello` and expect `welcome`.
    pub hello: bool,
}

/// One step of a case.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Open a connection.
    Connect(Connect),
    /// Open a y-websocket connection to one field.
    YConnect {
        /// The connection's name.
        name: String,
        /// The document.
        doc: String,
        /// The field.
        field: String,
        /// The user the token names.
        user: String,
        /// The role the token grants.
        role: String,
    },
    /// Send a JSON frame (after substituting bound variables).
    Send {
        /// The connection.
        conn: String,
        /// The frame.
        frame: Value,
    },
    /// Send a text frame as is.
    SendRaw {
        /// The connection.
        conn: String,
        /// The text.
        text: String,
    },
    /// Send a frame one byte over the announced `frame_bytes_max`.
    SendOversize {
        /// The connection.
        conn: String,
    },
    /// Send a text frame whose payload is not UTF-8.
    SendNotUtf8 {
        /// The connection.
        conn: String,
    },
    /// Expect a matching frame (anywhere among unread frames, or strictly the next one).
    Expect {
        /// The connection.
        conn: String,
        /// The pattern.
        pattern: Value,
        /// Only the next unread frame may match.
        next: bool,
        /// The name the matched frame's text is kept under, for a later `same=`.
        keep: Option<String>,
    },
    /// Expect a frame byte for byte equal to one kept earlier.
    ExpectSame {
        /// The connection.
        conn: String,
        /// The name the earlier frame was kept under.
        name: String,
        /// Only the next unread frame may match.
        next: bool,
    },
    /// No unread frame received so far matches.
    ExpectNone {
        /// The connection.
        conn: String,
        /// The pattern.
        pattern: Value,
    },
    /// The server closes the connection with one of these codes.
    Closed {
        /// The connection.
        conn: String,
        /// Acceptable close codes.
        codes: Vec<u16>,
    },
    /// The client closes the connection.
    Close {
        /// The connection.
        conn: String,
    },
    /// Send a Yjs frame.
    YjsSend {
        /// The connection.
        conn: String,
        /// Document id.
        doc: String,
        /// Field name.
        field: String,
        /// Message kind.
        kind: YjsKind,
        /// The payload (state vector or update).
        payload: Vec<u8>,
    },
    /// Expect (or rule out) a Yjs frame.
    YjsExpect {
        /// The connection.
        conn: String,
        /// Document id.
        doc: String,
        /// Field name.
        field: String,
        /// Message kind.
        kind: YjsKind,
        /// Bytes the payload must contain.
        contains: Option<Vec<u8>>,
        /// Bytes the payload must not contain.
        lacks: Option<Vec<u8>>,
        /// Rule the frame out instead of expecting it.
        none: bool,
    },
    /// The upgrade with a faulty token is refused.
    Refused {
        /// The user id.
        user: String,
        /// The role.
        role: String,
        /// What is wrong with the token.
        fault: TokenFault,
    },
    /// An HTTP request and its expected answer.
    Http(HttpStep),
    /// Restart the target; `open` keeps the case's connections open through it.
    Restart {
        /// Keep the connections open.
        open: bool,
    },
    /// Stop reading a connection.
    Pause {
        /// The connection.
        conn: String,
    },
    /// Read a paused connection again.
    Resume {
        /// The connection.
        conn: String,
    },
    /// Send many frames, each acknowledged.
    Repeat {
        /// The connection.
        conn: String,
        /// How many: a number or `"$name[+N]"`.
        count: Value,
        /// The frame, with `i` bound to its number.
        frame: Value,
    },
    /// The next commit in the case's room fails.
    FailCommit,
    /// A stock y-websocket client's step.
    Peer(PeerStep),
}

/// A step of the stock y-websocket clients a case plays (`yopen`, `ytype`, `ytext`, `yhas`,
/// `ysame`, `yaware`, `yseen`, `ysynced`, `ydrop`).
#[derive(Debug, Clone, PartialEq)]
pub enum PeerStep {
    /// Open (or reopen, keeping its document) a stock y-websocket client on a document's `body`.
    Open {
        /// The connection's name; its document lives as long as the case.
        name: String,
        /// The document.
        doc: String,
    },
    /// Edit a stock client's text: insert `text`, `repeat` times over, at `index`; sent if open.
    Type {
        /// The client.
        conn: String,
        /// Where, in characters, clamped to the text's length.
        index: u32,
        /// What.
        text: String,
        /// How many times over.
        repeat: usize,
    },
    /// A stock client's text becomes exactly `text` before the deadline.
    Text {
        /// The client.
        conn: String,
        /// The text.
        text: String,
    },
    /// A stock client's text comes to contain every word.
    Has {
        /// The client.
        conn: String,
        /// The words.
        words: Vec<String>,
    },
    /// The stock clients' texts become identical.
    Same {
        /// The clients.
        conns: Vec<String>,
    },
    /// A stock client sets its awareness state.
    Aware {
        /// The client.
        conn: String,
        /// The state.
        state: Value,
    },
    /// A stock client comes to hold another's awareness state (None: removed).
    Seen {
        /// The client that looks.
        conn: String,
        /// The client looked at.
        of: String,
        /// The state it should hold, or None for removed.
        state: Option<Value>,
    },
    /// A stock client has received the server's sync step 2 since it last opened.
    Synced {
        /// The client.
        conn: String,
    },
    /// A stock client's socket drops without a close frame.
    Drop {
        /// The client.
        conn: String,
    },
}

impl Step {
    /// The capabilities a step uses, whatever its case declares: the main socket and HTTP are
    /// `core`, stock clients are `y-websocket`, and the hooks are their sections.
    pub fn uses(&self) -> &'static [&'static str] {
        match self {
            Step::Connect(_)
            | Step::Send { .. }
            | Step::SendRaw { .. }
            | Step::SendOversize { .. }
            | Step::SendNotUtf8 { .. }
            | Step::Expect { .. }
            | Step::ExpectSame { .. }
            | Step::ExpectNone { .. }
            | Step::Closed { .. }
            | Step::Refused { .. }
            | Step::Http(_)
            | Step::Pause { .. }
            | Step::Resume { .. }
            | Step::Repeat { .. } => &["core"],
            Step::YjsSend { .. } | Step::YjsExpect { .. } | Step::Close { .. } => &[],
            Step::YConnect { .. } => &["y-websocket"],
            Step::Peer(_) => &["y-websocket"],
            Step::Restart { .. } => &["restart"],
            Step::FailCommit => &["fail-commit"],
        }
    }
}

/// An `http` step.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpStep {
    /// GET, POST, DELETE, ...
    pub method: String,
    /// The path, with `{room}` for the case's room.
    pub path: String,
    /// Who asks: (user, role); anonymous when absent.
    pub identity: Option<(String, String)>,
    /// The request's content type.
    pub content_type: Option<String>,
    /// The request body.
    pub body: Option<String>,
    /// The expected status.
    pub status: u16,
    /// A pattern for a JSON answer, or a string the body must equal.
    pub answer: Option<Value>,
}

/// A line of a case file that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct CaseError {
    /// The file.
    pub file: String,
    /// The line number, from 1.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
        })
    }
}

/// Parses one `.cases` file of `group`. A header may end with `needs=a,b`, with `racy` (the
/// case's frames depend on timing, so its transcript is not compared between runs) and with `alone`
/// (the case loads the target heavily, so it runs by itself).
pub fn parse_cases(file: &str, group: &str, text: &str) -> Result<Vec<Case>, CaseError> {
    let mut cases: Vec<Case> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let error = |message: String| CaseError { file: file.to_string(), line: index + 1, message };
        if let Some(header) = line.strip_prefix("case ") {
            cases.push(parse_header(header, group).map_err(error)?);
            continue;
        }
        let Some(case) = cases.last_mut() else {
            return Err(error("a step before the first `case` line".into()));
        };
        if let Some(about) = line.strip_prefix("about:") {
            case.description = about.trim().to_string();
            continue;
        }
        case.steps.push(parse_step(line).map_err(error)?);
    }
    for case in &mut cases {
        for step in &case.steps {
            for capability in step.uses() {
                if !case.needs.iter().any(|need| need == capability) {
                    case.needs.push(capability.to_string());
                }
            }
        }
    }
    for case in &cases {
        if case.steps.is_empty() || case.description.is_empty() {
            let message = format!("case {} needs an `about:` line and at least one step", case.id);
            return Err(CaseError { file: file.to_string(), line: 0, message });
        }
    }
    Ok(cases)
}

fn parse_header(header: &str, group: &str) -> Result<Case, String> {
    let words: Vec<&str> = header.split_whitespace().collect();
    let [id, rule, level, rest @ ..] = words.as_slice() else {
        return Err("a case header is `case ID RULE MUST|SHOULD [needs=a,b]`".into());
    };
    if !id.starts_with(&format!("{rule}#")) {
        return Err(format!("case id {id} must be `{rule}#<n>`"));
    }
    let level = match *level {
        "MUST" => Level::Must,
        "SHOULD" => Level::Should,
        other => return Err(format!("level {other} is neither MUST nor SHOULD")),
    };
    let (mut needs, mut racy, mut alone) = (Vec::new(), false, false);
    for word in rest {
        match (*word, word.strip_prefix("needs=")) {
            ("racy", _) => racy = true,
            ("alone", _) => alone = true,
            (_, Some(list)) => needs.extend(list.split(',').filter(|n| !n.is_empty()).map(str::to_string)),
            (word, None) => return Err(format!("unknown header word {word}")),
        }
    }
    Ok(Case {
        id: id.to_string(),
        rule: rule.to_string(),
        level,
        group: group.to_string(),
        needs,
        description: String::new(),
        racy,
        alone,
        steps: Vec::new(),
    })
}

fn json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("invalid JSON {text:?}: {e}"))
}

fn parse_step(line: &str) -> Result<Step, String> {
    let (head, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    match head {
        "connect" => parse_connect(rest),
        "yconnect" => parse_yconnect(rest),
        "refused" => parse_refused(rest),
        "http" => parse_http(rest),
        "restart" => match rest {
            "" => Ok(Step::Restart { open: false }),
            "open" => Ok(Step::Restart { open: true }),
            other => Err(format!("unknown restart option {other}")),
        },
        "fail-commit" if rest.is_empty() => Ok(Step::FailCommit),
        "yopen" => match rest.split_whitespace().collect::<Vec<_>>().as_slice() {
            [name, doc] => Ok(Step::Peer(PeerStep::Open { name: name.to_string(), doc: doc.to_string() })),
            _ => Err("yopen needs NAME DOC".into()),
        },
        "ysame" => {
            let conns: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
            match conns.len() >= 2 {
                true => Ok(Step::Peer(PeerStep::Same { conns })),
                false => Err("ysame needs two clients or more".into()),
            }
        }
        _ => match rest.split_once(' ').unwrap_or((rest, "")) {
            (verb, args) if verb.starts_with('y') && !head.contains(['<', '>', '!']) => {
                parse_ypeer_step(head.to_string(), verb, args.trim())
            }
            _ => parse_connection_step(head, rest),
        },
    }
}

/// `PATTERN [keep=NAME]` or `same=NAME`.
fn parse_expect(conn: String, pattern: &str, next: bool) -> Result<Step, String> {
    if let Some(name) = pattern.strip_prefix("same=") {
        return Ok(Step::ExpectSame { conn, name: name.trim().to_string(), next });
    }
    let (pattern, keep) = match pattern.rsplit_once(" keep=") {
        Some((pattern, name)) if !name.contains(['"', '}', ' ']) => (pattern, Some(name.to_string())),
        _ => (pattern, None),
    };
    Ok(Step::Expect { conn, pattern: json(pattern)?, next, keep })
}

fn parse_connection_step(head: &str, rest: &str) -> Result<Step, String> {
    let split = head.find(['<', '>', '!']).unwrap_or(head.len());
    let (conn, arrow) = head.split_at(split);
    let conn = conn.to_string();
    if conn.is_empty() {
        return Err(format!("unknown step {head}"));
    }
    match (arrow, rest) {
        ("", "close") => Ok(Step::Close { conn }),
        ("", "pause") => Ok(Step::Pause { conn }),
        ("", "resume") => Ok(Step::Resume { conn }),
        (repeat, frame) if repeat.starts_with(">>") => {
            let count = match (&repeat[2..], repeat[2..].parse::<u64>()) {
                (_, Ok(number)) => Value::from(number),
                (variable, _) if variable.starts_with('$') => Value::String(variable.to_string()),
                (other, _) => return Err(format!("bad repeat count {other:?} (a number or $name[+N])")),
            };
            Ok(Step::Repeat { conn, count, frame: json(frame)? })
        }
        ("", closed) if closed.starts_with("closed ") => {
            let codes = closed["closed ".len()..]
                .split('|')
                .map(|c| c.trim().parse::<u16>().map_err(|_| format!("bad close code {c}")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Step::Closed { conn, codes })
        }
        (">", frame) => Ok(Step::Send { conn, frame: json(frame)? }),
        (">raw", text) => Ok(Step::SendRaw { conn, text: text.to_string() }),
        (">oversize", "") => Ok(Step::SendOversize { conn }),
        (">not-utf8", "") => Ok(Step::SendNotUtf8 { conn }),
        ("<" | "<<", pattern) => parse_expect(conn, pattern, arrow == "<<"),
        ("!<", pattern) => Ok(Step::ExpectNone { conn, pattern: json(pattern)? }),
        (">yjs", args) => parse_yjs_send(conn, args),
        ("<yjs", args) => parse_yjs_expect(conn, args, false),
        ("!<yjs", args) => parse_yjs_expect(conn, args, true),
        _ => Err(format!("unknown step {head} {rest}")),
    }
}

/// The steps of a stock client: `A ytype INDEX TEXT [repeat=N]`, `A ytext TEXT` (`-`: empty),
/// `A yhas WORD...`, `A yaware JSON`, `A yseen B JSON|gone`, `A ysynced`, `A ydrop`.
fn parse_ypeer_step(conn: String, verb: &str, args: &str) -> Result<Step, String> {
    match verb {
        "ytype" => {
            let words: Vec<&str> = args.split_whitespace().collect();
            let (index, text, repeat) = match words.as_slice() {
                [index, text] => (index, text, "1"),
                [index, text, repeat] => {
                    (index, text, repeat.strip_prefix("repeat=").ok_or("ytype INDEX TEXT [repeat=N]")?)
                }
                _ => return Err("ytype needs INDEX TEXT [repeat=N]".into()),
            };
            let index = index.parse().map_err(|_| format!("bad index {index}"))?;
            let repeat = repeat.parse().map_err(|_| format!("bad repeat {repeat}"))?;
            Ok(Step::Peer(PeerStep::Type { conn, index, text: text.to_string(), repeat }))
        }
        "ytext" if args == "-" => Ok(Step::Peer(PeerStep::Text { conn, text: String::new() })),
        "ytext" if !args.is_empty() => Ok(Step::Peer(PeerStep::Text { conn, text: args.to_string() })),
        "yhas" if !args.is_empty() => Ok(Step::Peer(PeerStep::Has {
            conn,
            words: args.split_whitespace().map(str::to_string).collect(),
        })),
        "yaware" => Ok(Step::Peer(PeerStep::Aware { conn, state: json(args)? })),
        "yseen" => {
            let (of, state) = args.split_once(' ').ok_or("yseen needs CLIENT JSON|gone")?;
            let state = match state.trim() {
                "gone" => None,
                state => Some(json(state)?),
            };
            Ok(Step::Peer(PeerStep::Seen { conn, of: of.to_string(), state }))
        }
        "ydrop" if args.is_empty() => Ok(Step::Peer(PeerStep::Drop { conn })),
        "ysynced" if args.is_empty() => Ok(Step::Peer(PeerStep::Synced { conn })),
        other => Err(format!("unknown step {other} {args}")),
    }
}

fn parse_yconnect(rest: &str) -> Result<Step, String> {
    let words: Vec<&str> = rest.split_whitespace().collect();
    let [name, doc, field, user, role] = words.as_slice() else {
        return Err("yconnect needs NAME DOC FIELD USER ROLE".into());
    };
    check_role(role)?;
    let [name, doc, field, user, role] = [name, doc, field, user, role].map(|word| word.to_string());
    Ok(Step::YConnect { name, doc, field, user, role })
}

fn parse_connect(rest: &str) -> Result<Step, String> {
    let words: Vec<&str> = rest.split_whitespace().collect();
    let [name, user, role, options @ ..] = words.as_slice() else {
        return Err("connect needs NAME USER ROLE".into());
    };
    check_role(role)?;
    let mut connect = Connect {
        name: name.to_string(),
        user: user.to_string(),
        role: role.to_string(),
        plan: "pro".into(),
        addons: 0,
        client: format!("c-{name}"),
        room: None,
        hello: true,
    };
    for option in options {
        match option.split_once('=') {
            Some(("plan", plan @ ("free" | "pro"))) => connect.plan = plan.to_string(),
            Some(("addons", n)) => connect.addons = n.parse().map_err(|_| format!("bad addons {n}"))?,
            Some(("client", id)) => connect.client = id.to_string(),
            Some(("room", suffix)) => connect.room = Some(suffix.to_string()),
            Some(("hello", "no")) => connect.hello = false,
            _ => return Err(format!("unknown connect option {option}")),
        }
    }
    Ok(Step::Connect(connect))
}

fn check_role(role: &str) -> Result<(), String> {
    match role {
        "viewer" | "member" | "admin" => Ok(()),
        other => Err(format!("unknown role {other}")),
    }
}

fn parse_refused(rest: &str) -> Result<Step, String> {
    let words: Vec<&str> = rest.split_whitespace().collect();
    let [user, role, fault] = words.as_slice() else {
        return Err("refused needs USER ROLE missing|forged|expired|wrong-room".into());
    };
    check_role(role)?;
    let fault = match *fault {
        "missing" => TokenFault::Missing,
        "forged" => TokenFault::Forged,
        "expired" => TokenFault::Expired,
        "wrong-room" => TokenFault::WrongRoom,
        other => return Err(format!("unknown token fault {other}")),
    };
    Ok(Step::Refused { user: user.to_string(), role: role.to_string(), fault })
}

fn parse_http(rest: &str) -> Result<Step, String> {
    let (request, answer) = rest.split_once(" -> ").ok_or("http needs `-> STATUS`")?;
    let mut words = request.split_whitespace();
    let method = words.next().ok_or("http needs a method")?.to_string();
    let path = words.next().ok_or("http needs a path")?.to_string();
    let mut step =
        HttpStep { method, path, identity: None, content_type: None, body: None, status: 0, answer: None };
    for option in words {
        match option.split_once('=') {
            Some(("as", who)) => {
                let (user, role) = who.split_once(':').ok_or("as=USER:ROLE")?;
                check_role(role)?;
                step.identity = Some((user.to_string(), role.to_string()));
            }
            Some(("type", content_type)) => step.content_type = Some(content_type.to_string()),
            Some(("body", body)) => step.body = Some(body.to_string()),
            _ => return Err(format!("unknown http option {option}")),
        }
    }
    let answer = answer.trim();
    let (status, pattern) = answer.split_once(' ').unwrap_or((answer, ""));
    step.status = status.parse().map_err(|_| format!("bad status {status}"))?;
    if !pattern.trim().is_empty() {
        step.answer = Some(json(pattern.trim())?);
    }
    Ok(Step::Http(step))
}

fn yjs_kind(word: &str) -> Result<YjsKind, String> {
    match word {
        "step1" => Ok(YjsKind::Step1),
        "step2" => Ok(YjsKind::Step2),
        "update" => Ok(YjsKind::Update),
        other => Err(format!("unknown Yjs message {other}")),
    }
}

fn parse_yjs_send(conn: String, args: &str) -> Result<Step, String> {
    let words: Vec<&str> = args.split_whitespace().collect();
    let [doc, field, kind, hex] = words.as_slice() else {
        return Err("yjs send needs DOC FIELD KIND HEX".into());
    };
    let payload = decode_hex(hex)?;
    Ok(Step::YjsSend { conn, doc: doc.to_string(), field: field.to_string(), kind: yjs_kind(kind)?, payload })
}

fn parse_yjs_expect(conn: String, args: &str, none: bool) -> Result<Step, String> {
    let words: Vec<&str> = args.split_whitespace().collect();
    let [doc, field, kind, options @ ..] = words.as_slice() else {
        return Err("yjs expect needs DOC FIELD KIND".into());
    };
    let (mut contains, mut lacks) = (None, None);
    for option in options {
        match option.split_once('=') {
            Some(("contains", text)) => contains = Some(text.as_bytes().to_vec()),
            Some(("lacks", text)) => lacks = Some(text.as_bytes().to_vec()),
            _ => return Err(format!("unknown yjs option {option}")),
        }
    }
    let (doc, field, kind) = (doc.to_string(), field.to_string(), yjs_kind(kind)?);
    Ok(Step::YjsExpect { conn, doc, field, kind, contains, lacks, none })
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    if hex == "-" {
        return Ok(Vec::new());
    }
    if !hex.len().is_multiple_of(2) {
        return Err(format!("odd-length hex {hex}"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| format!("bad hex {hex}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &str) {
        let rendered = match parse_cases("t.cases", "records", text) {
            Ok(cases) => format!(
                "{:?}",
                cases.iter().map(|c| (&c.id, c.level, &c.needs, &c.steps)).collect::<Vec<_>>()
            ),
            Err(error) => error.to_string(),
        };
        assert_eq!(rendered, expected);
    }

    #[test]
    fn parses_and_refuses() {
        check(
            "case a.b#1 a.b SHOULD needs=x,y\n about: it\n connect a u1 admin plan=free\n a closed 1009|4008\n",
            r#"[("a.b#1", Should, ["x", "y", "core"], [Connect(Connect { name: "a", user: "u1", role: "admin", plan: "free", addons: 0, client: "c-a", room: None, hello: true }), Closed { conn: "a", codes: [1009, 4008] }])]"#,
        );
        check(
            "case a#1 a MUST alone\n about: z\n a pause\n b>>$n+1 {\"mid\":\"$i\"}\n a resume\n restart open\n fail-commit",
            r#"[("a#1", Must, ["core", "restart", "fail-commit"], [Pause { conn: "a" }, Repeat { conn: "b", count: String("$n+1"), frame: Object {"mid": String("$i")} }, Resume { conn: "a" }, Restart { open: true }, FailCommit])]"#,
        );
        check(
            "case a#1 a MUST\n about: z\n b>>many {}",
            "t.cases:3: bad repeat count \"many\" (a number or $name[+N])",
        );
        check("case a#1 a MUST\n about: z\n restart now", "t.cases:3: unknown restart option now");
        check("case x#1 y MUST\n about: z\n a< {", "t.cases:1: case id x#1 must be `y#<n>`");
        check(
            "case y#1 y MUST\n about: z\n a< {",
            "t.cases:3: invalid JSON \"{\": EOF while parsing an object at line 1 column 1",
        );
        check("case a#1 a MUST\n about: z\n connect a u1 king", "t.cases:3: unknown role king");
        check("case a#1 a MUST\n", "t.cases:0: case a#1 needs an `about:` line and at least one step");
        check(
            "case a#1 a MUST\n about: z\n http GET /v1/health -> 200 {\"status\":\"ok\"}",
            r#"[("a#1", Must, ["core"], [Http(HttpStep { method: "GET", path: "/v1/health", identity: None, content_type: None, body: None, status: 200, answer: Some(Object {"status": String("ok")}) })])]"#,
        );
        check(
            "case yws.x#1 yws.x MUST\n about: z\n yopen a d1\n a ytype 0 hi repeat=3\n a ytext -\n ysame a b\n b yseen a gone\n a ydrop",
            r#"[("yws.x#1", Must, ["y-websocket"], [Peer(Open { name: "a", doc: "d1" }), Peer(Type { conn: "a", index: 0, text: "hi", repeat: 3 }), Peer(Text { conn: "a", text: "" }), Peer(Same { conns: ["a", "b"] }), Peer(Seen { conn: "b", of: "a", state: None }), Peer(Drop { conn: "a" })])]"#,
        );
        check("case a#1 a MUST\n about: z\n ysame a", "t.cases:3: ysame needs two clients or more");
        check("case a#1 a MUST\n about: z\n a ytype x hi", "t.cases:3: bad index x");
    }
}
