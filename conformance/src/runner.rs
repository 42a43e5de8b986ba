//! Runs one case against a target: the steps in order, each with a deadline, every frame recorded.

use crate::case::{Case, Connect, HttpStep, Level, Step, YjsKind};
use crate::pattern::Bindings;
use crate::report::{CaseReport, FrameRecord, Verdict};
use crate::target::{Target, TargetAction};
use crate::wire::{self, Connection, Incoming, TokenRequest, Upgrade};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

mod ysteps;

/// The deadline of one step before the target's timeout multiplier.
pub const STEP_DEADLINE_MS: u64 = 2_000;

/// How long a restart may take before the case errs, before the multiplier.
pub const RESTART_DEADLINE_MS: u64 = 20_000;

/// Frames of a `>>` step that may wait for their answers at once.
const REPEAT_UNANSWERED_MAX: usize = 32;

/// The size of each frame a slow-consumer case floods with (`$flood_bytes`), at most; a target
/// with a smaller `doc_bytes_max` gets half of that.
const FLOOD_FRAME_BYTES: u64 = 16 << 10;

/// The least the suite assumes the kernel's socket buffers of both ends hold, in bytes.
const SOCKET_BUFFER_BYTES_MIN: u64 = 16 << 20;

/// What the socket buffers of both ends of a loopback connection can hold at most: the largest
/// receive and send buffers this machine's kernel lets TCP grow to (Linux), or the fixed minimum,
/// whichever is larger. A flood must overfill them before a server's own queue fills.
fn socket_buffer_bytes() -> u64 {
    let largest = |path: &str| -> u64 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.split_whitespace().last().and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    let both = largest("/proc/sys/net/ipv4/tcp_rmem") + largest("/proc/sys/net/ipv4/tcp_wmem");
    both.max(SOCKET_BUFFER_BYTES_MIN)
}

/// Why a step stopped the case.
struct Stop {
    verdict: Verdict,
    message: String,
}

fn failed(message: impl Into<String>) -> Stop {
    Stop { verdict: Verdict::Failed, message: message.into() }
}

fn error(message: impl Into<String>) -> Stop {
    Stop { verdict: Verdict::Error, message: message.into() }
}

struct Run<'a> {
    target: &'a Target,
    room: String,
    bindings: Bindings,
    connections: BTreeMap<String, Connection>,
    /// The y-websocket connections, with the (document, field) each speaks for.
    fields: BTreeMap<String, (String, String)>,
    frames: Vec<FrameRecord>,
    started: Instant,
    step_deadline: Duration,
    /// The stock y-websocket clients, each with its document, which outlives its sockets.
    peers: BTreeMap<String, crate::ypeer::YPeer>,
    /// Documents the case's stock clients needed created on the main socket.
    created: std::collections::BTreeSet<String>,
    /// Frames kept by `keep=NAME`, as received.
    kept: BTreeMap<String, String>,
}

/// Runs `case` in `room` (a room no other case uses).
pub async fn run_case(target: &Target, case: &Case, room: String) -> CaseReport {
    let started = Instant::now();
    let missing: Vec<&String> = case.needs.iter().filter(|n| !target.capabilities.contains(*n)).collect();
    let mut report = CaseReport::new(case, room.clone());
    if !missing.is_empty() {
        report.result = Verdict::Unimplemented;
        report.detail = format!("the target does not declare {missing:?}");
        return report;
    }
    let step_deadline = Duration::from_millis((STEP_DEADLINE_MS as f64 * target.timeout_multiplier) as u64);
    let mut run = Run {
        target,
        room,
        bindings: Bindings::default(),
        connections: BTreeMap::new(),
        fields: BTreeMap::new(),
        frames: Vec::new(),
        started,
        step_deadline,
        peers: BTreeMap::new(),
        created: Default::default(),
        kept: BTreeMap::new(),
    };
    if target.capabilities.contains("quota-small") {
        for (name, bytes) in [("quota_free", 1000), ("quota_pro", 2000), ("quota_addon", 1000)] {
            run.bindings.bind(name, Value::from(bytes));
        }
    }
    for (index, step) in case.steps.iter().enumerate() {
        if let Err(stop) = run.step(step).await {
            report.result = match (stop.verdict, case.level) {
                (Verdict::Failed | Verdict::Timeout, Level::Should) => Verdict::NonStrict,
                (verdict, _) => verdict,
            };
            report.detail = format!("step {}: {}", index + 1, stop.message);
            break;
        }
    }
    for connection in run.connections.values_mut() {
        connection.close().await;
    }
    report.frames = run.frames;
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}

/// The frame with every string over 64 bytes shortened to its start and its length, for transcripts.
fn abbreviate(frame: &Value) -> Value {
    match frame {
        Value::String(text) if text.len() > 64 => {
            let start: String = text.chars().take(8).collect();
            Value::String(format!("{start}... ({} bytes)", text.len()))
        }
        Value::Array(items) => Value::Array(items.iter().map(abbreviate).collect()),
        Value::Object(members) => {
            Value::Object(members.iter().map(|(k, v)| (k.clone(), abbreviate(v))).collect())
        }
        other => other.clone(),
    }
}

fn describe(incoming: &Incoming) -> String {
    match incoming {
        Incoming::Text(text) => text.clone(),
        Incoming::Binary(bytes) => match wire::parse_yjs(bytes) {
            Some((doc, field, kind, payload)) => {
                format!("yjs {doc}/{field} {kind:?} ({} bytes)", payload.len())
            }
            // A plain y-protocols message (a y-websocket connection's) starts with 0, never 0x59.
            None => match wire::parse_yjs_message(bytes) {
                Some((kind, payload)) => format!("y-protocols {kind:?} ({} bytes)", payload.len()),
                None => format!("binary ({} bytes)", bytes.len()),
            },
        },
        Incoming::Closed(code, reason) => format!("closed {code:?} {reason}"),
    }
}

impl Run<'_> {
    fn record(&mut self, conn: &str, outgoing: bool, text: String) {
        let at_ms = self.started.elapsed().as_millis() as u64;
        self.frames.push(FrameRecord { conn: conn.to_string(), outgoing, text, at_ms });
    }

    fn connection(&mut self, name: &str) -> Result<&mut Connection, Stop> {
        self.connections
            .get_mut(name)
            .ok_or_else(|| error(format!("no connection {name} (connect it first)")))
    }

    async fn step(&mut self, step: &Step) -> Result<(), Stop> {
        match step {
            Step::Connect(connect) => self.connect(connect).await,
            Step::Send { conn, frame } => {
                let frame = self.bindings.substitute(frame).map_err(error)?;
                self.send_text(conn, frame.to_string()).await
            }
            Step::SendRaw { conn, text } => self.send_text(conn, text.clone()).await,
            Step::SendOversize { conn } => self.send_oversize(conn).await,
            Step::SendNotUtf8 { conn } => self.send_not_utf8(conn).await,
            Step::Expect { conn, pattern, next, keep } => {
                let text = self.expect_text(conn, pattern, *next).await?;
                if let Some(name) = keep {
                    self.kept.insert(name.clone(), text);
                }
                Ok(())
            }
            Step::ExpectSame { conn, name, next } => self.expect_same(conn, name, *next).await,
            Step::ExpectNone { conn, pattern } => self.expect_none(conn, pattern),
            Step::Closed { conn, codes } => self.closed(conn, codes).await,
            Step::Close { conn } => {
                self.connection(conn)?.close().await;
                self.connections.remove(conn);
                self.fields.remove(conn);
                Ok(())
            }
            Step::YConnect { name, doc, field, user, role } => {
                self.open_field(name, (doc, field), user, role).await
            }
            Step::YjsSend { conn, doc, field, kind, payload } => {
                let frame = match self.raw_field(conn, doc, field)? {
                    true => wire::yjs_message(*kind, payload),
                    false => wire::yjs_frame(doc, field, *kind, payload),
                };
                self.record(conn, true, format!("yjs {doc}/{field} {kind:?} ({} bytes)", payload.len()));
                self.connection(conn)?.send(Message::Binary(frame.into())).await.map_err(failed)
            }
            Step::YjsExpect { conn, doc, field, kind, contains, lacks, none } => {
                self.expect_yjs(conn, (doc, field, *kind), (contains.as_deref(), lacks.as_deref()), *none)
                    .await
            }
            Step::Refused { user, role, fault } => self.refused(user, role, *fault).await,
            Step::Http(http) => self.http(http).await,
            Step::Restart { open } => self.restart(*open).await,
            Step::Pause { conn } => {
                self.record(conn, true, "(the suite stops reading)".into());
                self.connection(conn)?.pause(true);
                Ok(())
            }
            Step::Resume { conn } => {
                self.record(conn, true, "(the suite reads again)".into());
                self.connection(conn)?.pause(false);
                Ok(())
            }
            Step::Repeat { conn, count, frame } => self.repeat(conn, count, frame).await,
            Step::FailCommit => self.fail_commit().await,
            Step::Peer(peer) => self.ystep(peer).await,
        }
    }

    async fn connect(&mut self, connect: &Connect) -> Result<(), Stop> {
        let room = match &connect.room {
            Some(suffix) => format!("{}-{suffix}", self.room),
            None => self.room.clone(),
        };
        let request = TokenRequest {
            room: &room,
            user: &connect.user,
            role: &connect.role,
            plan: &connect.plan,
            addons: connect.addons,
        };
        let token = wire::token(self.target, &request, 3600).await.map_err(error)?;
        let url = self.target.ws_url.replace("{room}", &room).replace("{token}", &token);
        let connection = match Connection::open(&url).await.map_err(error)? {
            Upgrade::Open(connection) => connection,
            Upgrade::Status(status) => return Err(failed(format!("upgrade answered HTTP {status}"))),
        };
        self.connections.insert(connect.name.clone(), connection);
        self.fields.remove(&connect.name);
        if !connect.hello {
            return Ok(());
        }
        let hello = serde_json::json!({"type": "hello", "protocol": 1, "client": connect.client});
        self.send_text(&connect.name, hello.to_string()).await?;
        let welcome = self.expect(&connect.name, &serde_json::json!({"type": "welcome"}), false).await?;
        self.bind_welcome(&connect.name, &welcome);
        Ok(())
    }

    /// The target's y-websocket URL for (doc, field) in the case's room, `{token}` still in it.
    fn yjs_url(&self, doc: &str, field: &str) -> Result<String, Stop> {
        let template = self.target.yjs_url.as_ref().ok_or_else(|| error("the target has no yjs_url"))?;
        Ok(template.replace("{room}", &self.room).replace("{doc}", doc).replace("{field}", field))
    }

    /// Opens a y-websocket connection `name` for (doc, field), with a token for (user, role) if
    /// the target's URL takes one.
    async fn open_field(
        &mut self,
        name: &str,
        (doc, field): (&str, &str),
        user: &str,
        role: &str,
    ) -> Result<(), Stop> {
        let mut url = self.yjs_url(doc, field)?;
        if url.contains("{token}") {
            let request = TokenRequest { room: &self.room, user, role, plan: "pro", addons: 0 };
            let token = wire::token(self.target, &request, 3600).await.map_err(error)?;
            url = url.replace("{token}", &token);
        }
        let connection = match Connection::open(&url).await.map_err(error)? {
            Upgrade::Open(connection) => connection,
            Upgrade::Status(status) => {
                return Err(failed(format!("y-websocket upgrade answered HTTP {status}")))
            }
        };
        self.record(name, true, format!("(y-websocket upgrade for {doc}/{field} as {user} {role})"));
        self.connections.insert(name.to_string(), connection);
        self.fields.insert(name.to_string(), (doc.to_string(), field.to_string()));
        Ok(())
    }

    /// Whether `conn` is a y-websocket connection (and then for `doc`/`field`, or the case is wrong).
    fn raw_field(&self, conn: &str, doc: &str, field: &str) -> Result<bool, Stop> {
        match self.fields.get(conn) {
            None => Ok(false),
            Some((d, f)) if d == doc && f == field => Ok(true),
            Some((d, f)) => {
                Err(error(format!("{conn} is a y-websocket connection for {d}/{f}, not {doc}/{field}")))
            }
        }
    }

    /// Binds the announced limits (once per case) and `<name>.seq`.
    fn bind_welcome(&mut self, name: &str, welcome: &Value) {
        if let Some(limits) = welcome.get("limits").and_then(Value::as_object) {
            for (limit, value) in limits {
                if self.bindings.value(limit).is_none() {
                    self.bindings.bind(limit, value.clone());
                }
            }
        }
        let queue = welcome.pointer("/limits/outbound_queue_max").and_then(Value::as_u64);
        if let (Some(queue), None) = (queue, self.bindings.value("flood_count")) {
            // Frames within the target's document limit (half of it leaves room for the rest of
            // the document), enough to fill both ends' socket buffers, then the server's queue,
            // and one more.
            let doc_bytes_max = welcome.pointer("/limits/doc_bytes_max").and_then(Value::as_u64);
            let bytes = doc_bytes_max.map_or(FLOOD_FRAME_BYTES, |max| FLOOD_FRAME_BYTES.min(max / 2)).max(1);
            let count = socket_buffer_bytes().div_ceil(bytes) + queue + 1;
            self.bindings.bind("flood_bytes", Value::from(bytes));
            self.bindings.bind("flood_count", Value::from(count));
        }
        let frame_bytes_max = welcome.pointer("/limits/frame_bytes_max").and_then(Value::as_u64);
        let doc_bytes_max = welcome.pointer("/limits/doc_bytes_max").and_then(Value::as_u64);
        if let (Some(frame), Some(doc), None) =
            (frame_bytes_max, doc_bytes_max, self.bindings.value("oversize_docs"))
        {
            // Documents of half the document limit, enough of them that one answer holding them
            // all is over the frame limit (limits.frame-size).
            let bytes = (doc / 2).max(1);
            self.bindings.bind("oversize_doc_bytes", Value::from(bytes));
            self.bindings.bind("oversize_docs", Value::from(frame.div_ceil(bytes) + 1));
        }
        if let Some(seq) = welcome.get("seq") {
            self.bindings.bind(&format!("{name}.seq"), seq.clone());
        }
    }

    async fn send_text(&mut self, conn: &str, text: String) -> Result<(), Stop> {
        self.record(conn, true, text.clone());
        self.connection(conn)?.send(Message::Text(text.into())).await.map_err(failed)
    }

    async fn send_oversize(&mut self, conn: &str) -> Result<(), Stop> {
        let limit = self.bindings.value("frame_bytes_max").and_then(Value::as_u64);
        let limit = limit.ok_or_else(|| error("the target announced no frame_bytes_max"))? as usize;
        let head = r#"{"type":"ping","nonce":1,"pad":""#;
        let padding = (limit + 1).saturating_sub(head.len() + 2);
        let text = format!("{head}{}\"}}", "x".repeat(padding));
        self.record(conn, true, format!("(a ping padded to {} bytes)", text.len()));
        self.connection(conn)?.send(Message::Text(text.into())).await.map_err(failed)
    }

    async fn send_not_utf8(&mut self, conn: &str) -> Result<(), Stop> {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        let bytes: &[u8] = &[b'{', 0xff, 0xfe, b'}'];
        self.record(conn, true, "(a text frame of the bytes 7b ff fe 7d, which are not UTF-8)".into());
        let frame = Frame::message(bytes.to_vec(), OpCode::Data(Data::Text), true);
        self.connection(conn)?.send(Message::Frame(frame)).await.map_err(failed)
    }

    /// Waits for a frame that `accept` takes; returns what it returned. On the deadline the case
    /// FAILED if other frames arrived meanwhile (the target answered something else) and TIMED OUT
    /// if nothing did.
    async fn wait_for<T>(
        &mut self,
        conn: &str,
        what: &str,
        next: bool,
        mut accept: impl FnMut(&mut Bindings, &Incoming) -> Option<T>,
    ) -> Result<T, Stop> {
        let deadline = Instant::now() + self.step_deadline;
        let mut checked = 0;
        loop {
            let connection =
                self.connections.get_mut(conn).ok_or_else(|| error(format!("no connection {conn}")))?;
            while checked < connection.inbox.len() {
                if let Some(value) = accept(&mut self.bindings, &connection.inbox[checked]) {
                    let incoming = connection.inbox.remove(checked).expect("index checked");
                    self.record(conn, false, describe(&incoming));
                    return Ok(value);
                }
                if next {
                    let got = describe(&connection.inbox[checked]);
                    return Err(failed(format!("{conn} expected next {what}; got {got}")));
                }
                checked += 1;
            }
            if !connection.receive_until(deadline).await {
                let unread: Vec<String> = connection.inbox.iter().map(describe).collect();
                let message =
                    format!("{conn} expected {what} within {:?}; unread: {unread:?}", self.step_deadline);
                let verdict = if unread.is_empty() { Verdict::Timeout } else { Verdict::Failed };
                return Err(Stop { verdict, message });
            }
        }
    }

    /// Waits for a frame matching `pattern` and returns it.
    async fn expect(&mut self, conn: &str, pattern: &Value, next: bool) -> Result<Value, Stop> {
        self.wait_for(conn, &pattern.to_string(), next, |bindings, incoming| match incoming {
            Incoming::Text(text) => {
                let value: Value = serde_json::from_str(text).ok()?;
                bindings.matches(pattern, &value).then_some(value)
            }
            _ => None,
        })
        .await
    }

    /// As [`Self::expect`], returning the matched frame's text.
    async fn expect_text(&mut self, conn: &str, pattern: &Value, next: bool) -> Result<String, Stop> {
        self.wait_for(conn, &pattern.to_string(), next, |bindings, incoming| match incoming {
            Incoming::Text(text) => {
                let value: Value = serde_json::from_str(text).ok()?;
                bindings.matches(pattern, &value).then(|| text.clone())
            }
            _ => None,
        })
        .await
    }

    /// mutation.replay.same-answer and the like: a frame equal, byte for byte, to one kept before.
    async fn expect_same(&mut self, conn: &str, name: &str, next: bool) -> Result<(), Stop> {
        let kept = self.kept.get(name).cloned().ok_or_else(|| error(format!("no frame kept as {name}")))?;
        let what = format!("{kept} (byte for byte the frame kept as {name})");
        self.wait_for(conn, &what, next, |_, incoming| match incoming {
            Incoming::Text(text) => (*text == kept).then_some(()),
            _ => None,
        })
        .await
    }

    fn expect_none(&mut self, conn: &str, pattern: &Value) -> Result<(), Stop> {
        let mut trial = self.bindings.clone();
        let connection = self.connection(conn)?;
        connection.drain();
        for incoming in &connection.inbox {
            if let Incoming::Text(text) = incoming {
                let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                if trial.matches(pattern, &value) {
                    return Err(failed(format!("{conn} received {text}, which must not arrive")));
                }
            }
        }
        Ok(())
    }

    async fn closed(&mut self, conn: &str, codes: &[u16]) -> Result<(), Stop> {
        let what = format!("a close with {codes:?}");
        let code = self
            .wait_for(conn, &what, false, |_, incoming| match incoming {
                Incoming::Closed(code, _) => Some(*code),
                _ => None,
            })
            .await?;
        self.connections.remove(conn);
        self.fields.remove(conn);
        match code {
            Some(code) if codes.contains(&code) => Ok(()),
            other => Err(failed(format!("{conn} closed with {other:?}, expected one of {codes:?}"))),
        }
    }

    async fn expect_yjs(
        &mut self,
        conn: &str,
        (doc, field, kind): (&str, &str, YjsKind),
        (contains, lacks): (Option<&[u8]>, Option<&[u8]>),
        none: bool,
    ) -> Result<(), Stop> {
        let has = |payload: &[u8], needle: &[u8]| payload.windows(needle.len()).any(|w| w == needle);
        let raw = self.raw_field(conn, doc, field)?;
        let parse = |bytes: &[u8]| match raw {
            true => wire::parse_yjs_message(bytes)
                .map(|(k, payload)| (doc.to_string(), field.to_string(), k, payload)),
            false => wire::parse_yjs(bytes),
        };
        let matches = |incoming: &Incoming| match incoming {
            Incoming::Binary(bytes) => parse(bytes).is_some_and(|(d, f, k, payload)| {
                d == doc
                    && f == field
                    && k == kind
                    && contains.is_none_or(|needle| has(&payload, needle))
                    && lacks.is_none_or(|needle| !has(&payload, needle))
            }),
            _ => false,
        };
        if none {
            let connection = self.connection(conn)?;
            connection.drain();
            if connection.inbox.iter().any(matches) {
                return Err(failed(format!(
                    "{conn} received a Yjs {kind:?} for {doc}/{field}, which must not arrive"
                )));
            }
            return Ok(());
        }
        let what = format!("a Yjs {kind:?} for {doc}/{field}");
        self.wait_for(conn, &what, false, |_, incoming| matches(incoming).then_some(())).await
    }

    async fn refused(&mut self, user: &str, role: &str, fault: crate::case::TokenFault) -> Result<(), Stop> {
        let request = TokenRequest { room: &self.room, user, role, plan: "pro", addons: 0 };
        let token = wire::faulty_token(self.target, &request, fault).await.map_err(error)?;
        let url = match token {
            Some(token) => self.target.ws_url.replace("{room}", &self.room).replace("{token}", &token),
            None => strip_token(&self.target.ws_url.replace("{room}", &self.room)),
        };
        self.record("refused", true, format!("upgrade with a {fault:?} token"));
        let mut connection = match Connection::open(&url).await.map_err(error)? {
            Upgrade::Status(401) => {
                self.record("refused", false, "HTTP 401".into());
                return Ok(());
            }
            Upgrade::Status(status) => {
                return Err(failed(format!("upgrade answered HTTP {status}, not 401")))
            }
            Upgrade::Open(connection) => connection,
        };
        let deadline = Instant::now() + self.step_deadline;
        while connection.receive_until(deadline).await {
            if let Some(Incoming::Closed(code, reason)) = connection.inbox.back() {
                let (code, reason) = (*code, reason.clone());
                self.record("refused", false, format!("closed {code:?} {reason}"));
                return match code {
                    Some(4001) => Ok(()),
                    other => Err(failed(format!("closed with {other:?}, not 4001"))),
                };
            }
        }
        Err(failed("the socket stayed open: neither HTTP 401 nor close 4001"))
    }

    /// The path with `{room}` and every `{name}` of a bound variable filled in.
    fn fill_path(&self, path: &str) -> Result<String, Stop> {
        let mut out = String::new();
        let mut rest = path;
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').ok_or_else(|| error(format!("unclosed {{ in {path}")))? + open;
            let name = &rest[open + 1..close];
            out.push_str(&rest[..open]);
            match (name, self.bindings.value(name)) {
                ("room", _) => out.push_str(&self.room),
                (_, Some(Value::String(text))) => out.push_str(text),
                (_, Some(value)) => out.push_str(&value.to_string()),
                (_, None) => return Err(error(format!("{{{name}}} in {path} is not bound"))),
            }
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    async fn http(&mut self, step: &HttpStep) -> Result<(), Stop> {
        let path = self.fill_path(&step.path)?;
        let mut headers = Vec::new();
        if let Some((user, role)) = &step.identity {
            let request = TokenRequest { room: &self.room, user, role, plan: "pro", addons: 0 };
            let token = wire::token(self.target, &request, 3600).await.map_err(error)?;
            headers.push(("authorization", format!("Bearer {token}")));
        }
        if let Some(content_type) = &step.content_type {
            headers.push(("content-type", content_type.clone()));
        }
        // A body may be a variable (`body=$fill:asset_bytes_max+1`).
        let body = match &step.body {
            Some(body) => match self.bindings.substitute(&Value::String(body.clone())).map_err(error)? {
                Value::String(text) => text.into_bytes(),
                other => other.to_string().into_bytes(),
            },
            None => Vec::new(),
        };
        let shown = if body.len() > 64 { format!(" ({} bytes)", body.len()) } else { String::new() };
        self.record("http", true, format!("{} {path}{shown}", step.method));
        let call = wire::http(&self.target.http_base, &step.method, &path, &headers, body);
        let answer = match tokio::time::timeout(self.step_deadline, call).await {
            Ok(answer) => answer.map_err(failed)?,
            Err(_) => {
                return Err(Stop { verdict: Verdict::Timeout, message: format!("HTTP {path} timed out") })
            }
        };
        let text = String::from_utf8_lossy(&answer.body).to_string();
        self.record("http", false, format!("{} {text}", answer.status));
        if answer.status != step.status {
            return Err(failed(format!(
                "HTTP {} {path} answered {}, expected {}",
                step.method, answer.status, step.status
            )));
        }
        let Some(pattern) = &step.answer else { return Ok(()) };
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if self.bindings.matches(pattern, &value) {
            Ok(())
        } else {
            Err(failed(format!("HTTP {path} answered {text}, expected {pattern}")))
        }
    }

    /// Sends `count` frames on `conn`, `i` bound to each one's number, and waits for each one's
    /// ack (by `mid`), with at most [`REPEAT_UNANSWERED_MAX`] unanswered. The transcript records
    /// the first frame and a count, not thousands of lines.
    async fn repeat(&mut self, conn: &str, count: &Value, frame: &Value) -> Result<(), Stop> {
        let count_written = count;
        let count = self.bindings.substitute(count).map_err(error)?;
        let count = count.as_u64().ok_or_else(|| error(format!("repeat count {count} is not a number")))?;
        let mut unanswered = std::collections::BTreeSet::new();
        for i in 1..=count {
            self.bindings.bind("i", Value::from(i));
            let frame = self.bindings.substitute(frame).map_err(error)?;
            let mid = frame.get("mid").and_then(Value::as_u64);
            let mid = mid.ok_or_else(|| error("every frame of a `>>` step needs a numeric mid"))?;
            if i == 1 {
                // The count as the case wrote it: `$flood_count` depends on the machine's kernel.
                let shown = count_written.as_str().map_or_else(|| count.to_string(), str::to_string);
                self.record(conn, true, format!("({shown} frames like) {}", abbreviate(&frame)));
            }
            self.connection(conn)?.send(Message::Text(frame.to_string().into())).await.map_err(failed)?;
            unanswered.insert(mid);
            while unanswered.len() >= REPEAT_UNANSWERED_MAX || (i == count && !unanswered.is_empty()) {
                self.repeat_answer(conn, &mut unanswered).await?;
            }
        }
        self.record(conn, false, "(every one acknowledged)".into());
        Ok(())
    }

    /// Waits for the answer to one of the `unanswered` mids; anything but an ack fails the case.
    async fn repeat_answer(
        &mut self,
        conn: &str,
        unanswered: &mut std::collections::BTreeSet<u64>,
    ) -> Result<(), Stop> {
        let deadline = Instant::now() + self.step_deadline;
        let connection =
            self.connections.get_mut(conn).ok_or_else(|| error(format!("no connection {conn}")))?;
        loop {
            // The first frame answering one of the mids, with that mid and whether it is an ack.
            let answer = connection.inbox.iter().enumerate().find_map(|(at, incoming)| {
                let Incoming::Text(text) = incoming else { return None };
                let value = serde_json::from_str::<Value>(text).ok()?;
                let mid = value.get("mid").and_then(Value::as_u64).filter(|mid| unanswered.contains(mid))?;
                Some((at, mid, value.get("type").and_then(Value::as_str) == Some("ack")))
            });
            if let Some((at, mid, acked)) = answer {
                let Some(Incoming::Text(text)) = connection.inbox.remove(at) else { unreachable!() };
                if !acked {
                    self.record(conn, false, text.clone());
                    return Err(failed(format!("{conn} expected an ack; got {text}")));
                }
                unanswered.remove(&mid);
                return Ok(());
            }
            if !connection.receive_until(deadline).await {
                let message =
                    format!("{conn} expected acks of mids {unanswered:?} within {:?}", self.step_deadline);
                return Err(Stop { verdict: Verdict::Timeout, message });
            }
        }
    }

    async fn fail_commit(&mut self) -> Result<(), Stop> {
        self.record("target", true, "fail the next commit".into());
        let action = self.target.fail_commit.clone();
        self.act("fail_commit", action, self.step_deadline).await
    }

    async fn restart(&mut self, open: bool) -> Result<(), Stop> {
        self.record("target", true, if open { "restart (connections open)" } else { "restart" }.into());
        if !open {
            for connection in self.connections.values_mut() {
                connection.close().await;
            }
            self.connections.clear();
        }
        let deadline =
            Duration::from_millis((RESTART_DEADLINE_MS as f64 * self.target.timeout_multiplier) as u64);
        self.act("restart", self.target.restart.clone(), deadline).await?;
        self.wait_healthy(deadline).await
    }

    /// Carries out one of the target's actions (`name` is its section in target files) for the
    /// case's room, within `deadline`.
    async fn act(
        &mut self,
        name: &str,
        action: Option<TargetAction>,
        deadline: Duration,
    ) -> Result<(), Stop> {
        let Some(action) = action else { return Err(error(format!("the target has no {name}"))) };
        match tokio::time::timeout(deadline, action.run(&self.room)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(error(format!("{name}: {message}"))),
            Err(_) => Err(error(format!("{name} took longer than {deadline:?}"))),
        }
    }

    /// Waits for the target to answer again: `/v1/health`, or for a y-websocket-only target, an
    /// upgrade of its `yjs_url`.
    async fn wait_healthy(&mut self, deadline: Duration) -> Result<(), Stop> {
        let until = Instant::now() + deadline;
        loop {
            let healthy = match self.target.http_base.is_empty() {
                // A y-websocket-only target: its endpoint upgrades again (no token needed to tell).
                true => match self.yjs_url("health", "body") {
                    Ok(url) => matches!(Connection::open(&url).await, Ok(Upgrade::Open(_))),
                    Err(_) => false,
                },
                false => wire::http(&self.target.http_base, "GET", "/v1/health", &[], Vec::new())
                    .await
                    .is_ok_and(|a| a.status == 200),
            };
            if healthy {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(error("the target did not answer /v1/health after the restart"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The URL without its `token` query parameter.
fn strip_token(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else { return url.to_string() };
    let kept: Vec<&str> = query.split('&').filter(|p| !p.starts_with("token=")).collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}
