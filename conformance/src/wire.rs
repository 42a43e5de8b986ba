//! The suite's side of the wire: WebSocket connections with an inbox, Yjs framing, HTTP requests,
//! and tokens.

use crate::case::{TokenFault, YjsKind};
use crate::target::{Target, TokenSource};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use std::collections::VecDeque;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Frames one connection may hold unread before the suite stops reading it; a target that floods a
/// connection fails the case rather than the harness.
pub const INBOX_MAX: usize = 10_000;

/// A frame the suite received.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
    /// The connection closed with this code (None: no close frame, or a dropped socket).
    Closed(Option<u16>, String),
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One open WebSocket of a case.
pub struct Connection {
    sink: SplitSink<Socket, Message>,
    receiver: mpsc::Receiver<Incoming>,
    /// While true the reader leaves the socket alone, so frames wait in the kernel and the server.
    paused: tokio::sync::watch::Sender<bool>,
    /// Frames received and not yet consumed by a step, in arrival order.
    pub inbox: VecDeque<Incoming>,
    /// Set once the close (or the end of the stream) has been received.
    pub closed: bool,
    /// The task reading the socket; aborting it (with the sink dropped) drops the socket.
    reader: tokio::task::AbortHandle,
}

/// How an upgrade went.
pub enum Upgrade {
    /// The socket is open.
    Open(Connection),
    /// The server answered the upgrade with this HTTP status.
    Status(u16),
}

impl Connection {
    /// Opens `url`.
    pub async fn open(url: &str) -> Result<Upgrade, String> {
        // Nagle's algorithm would hold a small frame behind an unacknowledged one (and the peer's
        // delayed ACK), which turns pipelined requests into 40 ms stalls.
        let socket = match tokio_tungstenite::connect_async_with_config(url, None, true).await {
            Ok((socket, _)) => socket,
            Err(tungstenite::Error::Http(response)) => {
                return Ok(Upgrade::Status(response.status().as_u16()))
            }
            Err(error) => return Err(format!("connecting to {}: {error}", redact(url))),
        };
        let (sink, mut stream) = socket.split();
        let (sender, receiver) = mpsc::channel(INBOX_MAX);
        let (paused, mut reading) = tokio::sync::watch::channel(false);
        let reader = tokio::spawn(async move {
            loop {
                // A dropped connection drops the sender too; then nothing pauses the reader.
                let _ = reading.wait_for(|paused| !paused).await;
                let Some(item) = stream.next().await else { break };
                let incoming = match item {
                    Ok(Message::Text(text)) => Incoming::Text(text.to_string()),
                    Ok(Message::Binary(bytes)) => Incoming::Binary(bytes.to_vec()),
                    Ok(Message::Close(frame)) => closed(frame),
                    Ok(_) => continue,
                    Err(error) => Incoming::Closed(None, error.to_string()),
                };
                let last = matches!(incoming, Incoming::Closed(..));
                if sender.send(incoming).await.is_err() || last {
                    return;
                }
            }
            let _ = sender.send(Incoming::Closed(None, "stream ended".into())).await;
        })
        .abort_handle();
        let inbox = VecDeque::new();
        Ok(Upgrade::Open(Connection { sink, receiver, paused, inbox, closed: false, reader }))
    }

    /// Stops (true) or resumes (false) reading from the socket.
    pub fn pause(&mut self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Sends a frame.
    pub async fn send(&mut self, message: Message) -> Result<(), String> {
        self.sink.send(message).await.map_err(|e| format!("sending: {e}"))
    }

    /// Drops the socket without a close frame, as a crashed client or a lost network does.
    pub fn drop_abruptly(self) {
        self.reader.abort();
    }

    /// Closes the connection from the client's side.
    pub async fn close(&mut self) {
        let _ = self.sink.close().await;
    }

    /// Waits until a frame arrives (into the inbox) or `deadline`; false on timeout or when the
    /// connection has ended.
    pub async fn receive_until(&mut self, deadline: tokio::time::Instant) -> bool {
        if self.closed {
            return false;
        }
        match tokio::time::timeout_at(deadline, self.receiver.recv()).await {
            Ok(Some(incoming)) => {
                self.closed |= matches!(incoming, Incoming::Closed(..));
                self.inbox.push_back(incoming);
                true
            }
            Ok(None) => {
                self.closed = true;
                false
            }
            Err(_) => false,
        }
    }

    /// Moves every frame already received into the inbox, without waiting.
    pub fn drain(&mut self) {
        while let Ok(incoming) = self.receiver.try_recv() {
            self.closed |= matches!(incoming, Incoming::Closed(..));
            self.inbox.push_back(incoming);
        }
    }
}

fn closed(frame: Option<CloseFrame>) -> Incoming {
    match frame {
        Some(frame) => Incoming::Closed(Some(u16::from(frame.code)), frame.reason.to_string()),
        None => Incoming::Closed(None, "close without a code".into()),
    }
}

fn write_var_uint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn write_var_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_var_uint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn kind_number(kind: YjsKind) -> u64 {
    match kind {
        YjsKind::Step1 => 0,
        YjsKind::Step2 => 1,
        YjsKind::Update => 2,
    }
}

/// The URL with the value of its `token` parameter hidden, for messages: a token signed with the
/// target's secret is a credential.
pub fn redact(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else { return url.to_string() };
    let parameters: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some(("token", _)) => "token=<redacted>".to_string(),
            _ => p.to_string(),
        })
        .collect();
    format!("{base}?{}", parameters.join("&"))
}

/// The main-socket Yjs frame for a sync message (PROTOCOL §19).
pub fn yjs_frame(doc: &str, field: &str, kind: YjsKind, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x59];
    write_var_bytes(&mut out, doc.as_bytes());
    write_var_bytes(&mut out, field.as_bytes());
    out.extend(yjs_message(kind, payload));
    out
}

/// A plain y-protocols sync message, as a y-websocket endpoint carries it (no envelope).
pub fn yjs_message(kind: YjsKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_var_uint(&mut out, 0);
    write_var_uint(&mut out, kind_number(kind));
    write_var_bytes(&mut out, payload);
    out
}

fn read_var_uint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

fn read_var_bytes<'a>(bytes: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let length = read_var_uint(bytes, at)? as usize;
    let slice = bytes.get(*at..at.checked_add(length)?)?;
    *at += length;
    Some(slice)
}

/// A Yjs sync frame read back: (doc, field, kind, payload); None for anything else (awareness too).
pub fn parse_yjs(frame: &[u8]) -> Option<(String, String, YjsKind, Vec<u8>)> {
    let mut at = 1;
    if frame.first() != Some(&0x59) {
        return None;
    }
    let doc = String::from_utf8(read_var_bytes(frame, &mut at)?.to_vec()).ok()?;
    let field = String::from_utf8(read_var_bytes(frame, &mut at)?.to_vec()).ok()?;
    let (kind, payload) = parse_sync(frame, at)?;
    Some((doc, field, kind, payload))
}

/// A plain y-protocols sync message read back: (kind, payload); None for anything else.
pub fn parse_yjs_message(message: &[u8]) -> Option<(YjsKind, Vec<u8>)> {
    parse_sync(message, 0)
}

fn parse_sync(bytes: &[u8], mut at: usize) -> Option<(YjsKind, Vec<u8>)> {
    if read_var_uint(bytes, &mut at)? != 0 {
        return None;
    }
    let kind = match read_var_uint(bytes, &mut at)? {
        0 => YjsKind::Step1,
        1 => YjsKind::Step2,
        2 => YjsKind::Update,
        _ => return None,
    };
    Some((kind, read_var_bytes(bytes, &mut at)?.to_vec()))
}

/// The claims of a token the suite mints.
#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    room: &'a str,
    role: &'a str,
    exp: u64,
    plan: &'a str,
    addons: u32,
}

/// Who a token is for.
pub struct TokenRequest<'a> {
    /// The room.
    pub room: &'a str,
    /// The user id.
    pub user: &'a str,
    /// The role.
    pub role: &'a str,
    /// The plan.
    pub plan: &'a str,
    /// Add-ons.
    pub addons: u32,
}

fn unix_now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn sign(secret: &[u8], request: &TokenRequest<'_>, exp: u64) -> String {
    let claims = Claims {
        sub: request.user,
        room: request.room,
        role: request.role,
        exp,
        plan: request.plan,
        addons: request.addons,
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key)
        .expect("HS256 signing of plain claims cannot fail")
}

/// A token from the target's token source, expiring `ttl_s` from now (negative: already expired).
pub async fn token(target: &Target, request: &TokenRequest<'_>, ttl_s: i64) -> Result<String, String> {
    let exp = unix_now_s().saturating_add_signed(ttl_s);
    match &target.tokens {
        TokenSource::Secret(secret) => Ok(sign(secret, request, exp)),
        TokenSource::Command(template) => {
            let command = template
                .replace("{room}", request.room)
                .replace("{user}", request.user)
                .replace("{role}", request.role)
                .replace("{plan}", request.plan)
                .replace("{addons}", &request.addons.to_string())
                .replace("{exp}", &exp.to_string());
            shell(&command).await.map_err(|e| format!("token {e}"))
        }
        TokenSource::None => Err("the target has no [token] section".into()),
    }
}

/// Runs a shell command of the target file and returns its standard output, trimmed.
pub async fn shell(command: &str) -> Result<String, String> {
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .await
        .map_err(|e| format!("command {command:?}: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("command {command:?} failed ({}): {}", output.status, stderr.trim()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// A token with `fault` for `request`; None for a missing token.
pub async fn faulty_token(
    target: &Target,
    request: &TokenRequest<'_>,
    fault: TokenFault,
) -> Result<Option<String>, String> {
    Ok(match fault {
        TokenFault::Missing => None,
        TokenFault::Forged => Some(sign(b"not the target's secret, surely", request, unix_now_s() + 3600)),
        TokenFault::Expired => Some(token(target, request, -3600).await?),
        TokenFault::WrongRoom => {
            let other = format!("{}-elsewhere", request.room);
            Some(token(target, &TokenRequest { room: &other, ..*request }, 3600).await?)
        }
    })
}

/// An HTTP answer.
pub struct HttpAnswer {
    /// The status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// Sends one HTTP/1.1 request to the target's HTTP base.
pub async fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<HttpAnswer, String> {
    let authority = base.strip_prefix("http://").ok_or_else(|| format!("http_base {base} is not http://"))?;
    let stream =
        TcpStream::connect(authority).await.map_err(|e| format!("connecting to {authority}: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(connection);
    let mut request = hyper::Request::builder().method(method).uri(path).header("host", authority);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request =
        request.body(Full::new(bytes::Bytes::from(body))).map_err(|e| format!("HTTP request: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("HTTP {method} {path}: {e}"))?;
    let status = response.status().as_u16();
    let body =
        response.into_body().collect().await.map_err(|e| format!("HTTP body: {e}"))?.to_bytes().to_vec();
    Ok(HttpAnswer { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_redacted_from_urls() {
        let redacted = |url: &str| redact(url);
        assert_eq!(redacted("ws://h/ws/r?token=abc.def&x=1"), "ws://h/ws/r?token=<redacted>&x=1");
        assert_eq!(redacted("ws://h/ws/r?x=1&token=abc"), "ws://h/ws/r?x=1&token=<redacted>");
        assert_eq!(redacted("ws://h/yjs/r/d/f"), "ws://h/yjs/r/d/f");
    }

    #[tokio::test]
    async fn token_commands_fill_their_template() {
        let mut target = crate::Target::parse(
            "name = \"t\"\nws_url = \"ws://h/{room}?token={token}\"\nhttp_base = \"http://h\"\ncapabilities = []\n[token]\ncommand = \"echo {user}.{room}.{role}.{plan}.{addons}\"\n",
        )
        .unwrap();
        let request = TokenRequest { room: "r1", user: "u1", role: "admin", plan: "free", addons: 2 };
        assert_eq!(token(&target, &request, 60).await.unwrap(), "u1.r1.admin.free.2");
        target.tokens = TokenSource::Command("exit 3".into());
        assert!(token(&target, &request, 60).await.unwrap_err().contains("failed"));
    }

    #[test]
    fn yjs_frames_round_trip() {
        let long = "x".repeat(200);
        for (doc, field, kind, payload) in
            [("t1", "body", YjsKind::Step1, vec![0u8]), (long.as_str(), "f", YjsKind::Update, vec![7; 300])]
        {
            let frame = yjs_frame(doc, field, kind, &payload);
            assert_eq!(parse_yjs(&frame), Some((doc.to_string(), field.to_string(), kind, payload)));
        }
        assert_eq!(parse_yjs(&[0x59, 5, b'a']), None);
        let message = yjs_message(YjsKind::Step2, &[1, 2, 3]);
        assert_eq!(message, [0, 1, 3, 1, 2, 3]);
        assert_eq!(parse_yjs_message(&message), Some((YjsKind::Step2, vec![1, 2, 3])));
        assert_eq!(parse_yjs_message(&[1, 0]), None, "awareness is not a sync message");
    }
}
