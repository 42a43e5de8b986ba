//! `roomlab connect`: a line client for talking to a room by hand. It says `hello`, prints every
//! frame it receives as indented JSON on standard output, and sends each line typed on standard
//! input: a JSON message as it is, or a short command (`help` lists them) that it turns into a
//! message, numbering mutation ids and ping nonces itself. Notes (what was sent, how the
//! connection ended) go to standard error, so standard output stays a stream of JSON values.

use crate::usage;
use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use roomlab_protocol::{ClientMessage, PROTOCOL_VERSION};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The options of `roomlab connect`.
#[derive(clap::Args)]
pub struct ConnectArgs {
    /// The room's WebSocket address, like ws://127.0.0.1:8787/ws/canvas-1.
    url: String,
    /// The room token (`roomlab token --room R --user U` mints one); added to the address as
    /// `?token=`.
    #[arg(long)]
    token: Option<String>,
    /// The client id `hello` sends, which scopes mutation ids (a fresh one by default).
    #[arg(long, value_name = "ID")]
    client: Option<String>,
}

/// Once standard input ends, how long the session waits for the answers still owed to it.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// Once every answer is in, how long the session waits for pushes that follow them.
const QUIET_WAIT: Duration = Duration::from_millis(300);

/// How long a closing session waits for the server's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Lines of standard input queued ahead of the socket.
const INPUT_QUEUE: usize = 64;

const HELP: &str = "\
type a JSON message to send it as it is, or one of:
  sub ID QUERY_JSON         subscribe to a live query, e.g. sub q1 {\"collection\":\"tasks\"}
  sub ID DOC                subscribe to one document, e.g. sub d1 sys:trash
  unsub ID                  end a subscription
  create DOC TYPE DATA_JSON create a document, e.g. create t1 tasks {\"title\":\"write docs\"}
  put DOC DATA_JSON         replace a document's data
  patch DOC DATA_JSON       merge a JSON merge patch into a document's data
  remove DOC                soft-delete a document
  ping                      ask for a pong
  quit                      close the connection and exit (so does the end of input)
  help                      this list
mutation ids (mid) and ping nonces are numbered for you";

/// How a session ended.
#[derive(Debug, PartialEq)]
pub enum Ending {
    /// Standard input ended or `quit` was typed: the client closed.
    ClientClosed,
    /// The server closed, with this code (1005 when its close frame had none) and reason.
    ServerClosed(u16, String),
    /// The connection broke without a close frame.
    Broken(String),
}

/// Runs `roomlab connect`; false when the server closed the connection with an error code or
/// the connection broke.
pub fn run_connect(args: ConnectArgs) -> Result<bool> {
    let url = session_url(&args.url, args.token.as_deref())?;
    let client = match args.client {
        Some(client) => client,
        None => format!("connect-{:016x}", crate::os_seed()?),
    };
    let (lines, input) = mpsc::channel(INPUT_QUEUE);
    // A thread of its own for the terminal: tokio's stdin would keep the runtime from shutting
    // down while a read is pending, and a session the server closed must exit at once.
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (mut out, mut notes) = (std::io::stdout(), std::io::stderr());
    let ending = runtime.block_on(session(&url, &client, input, &mut out, &mut notes))?;
    Ok(match ending {
        Ending::ClientClosed => true,
        Ending::ServerClosed(code, _) => matches!(code, 1000 | 1001),
        Ending::Broken(_) => false,
    })
}

/// The address with the token added, or a usage error saying what is missing.
fn session_url(url: &str, token: Option<&str>) -> Result<String> {
    if url.starts_with("wss://") {
        return Err(usage("this build speaks ws:// only (no TLS); connect to the server's ws:// address"));
    }
    if !url.starts_with("ws://") {
        return Err(usage(format!("{url} is not a WebSocket address: give ws://HOST:PORT/ws/ROOM")));
    }
    match token {
        Some(token) => {
            let separator = if url.contains('?') { '&' } else { '?' };
            Ok(format!("{url}{separator}token={token}"))
        }
        None if url.contains("token=") => Ok(url.to_string()),
        None => Err(usage(
            "give --token T: the server opens a room only with a token (`roomlab token --room ROOM --user USER` mints one)",
        )),
    }
}

/// The numbering and the answers the session is owed.
#[derive(Default)]
struct Tracker {
    /// The last mutation id used.
    mid: u64,
    /// The last ping nonce used.
    nonce: u64,
    /// What answers are still owed: `hello`, `sub:ID`, `mid:N`, `req:N`, `nonce:N`.
    owed: BTreeSet<String>,
}

impl Tracker {
    /// Notes a message about to be sent: the answer it is owed, and the numbers it used (a typed
    /// JSON message may bring its own mid, which the numbering then goes on from).
    fn sent(&mut self, message: &Value) {
        let number = |field: &str| message.get(field).and_then(Value::as_u64);
        if let Some(mid) = number("mid") {
            self.mid = self.mid.max(mid);
        }
        if let Some(nonce) = number("nonce") {
            self.nonce = self.nonce.max(nonce);
        }
        let key = match message.get("type").and_then(Value::as_str) {
            Some("hello") => Some("hello".to_string()),
            Some("subscribe" | "unsubscribe") => {
                message.get("sub").and_then(Value::as_str).map(|s| format!("sub:{s}"))
            }
            Some("mutate") => number("mid").map(|mid| format!("mid:{mid}")),
            Some("bucket_get" | "asset_list") => number("req").map(|req| format!("req:{req}")),
            Some("ping") => number("nonce").map(|nonce| format!("nonce:{nonce}")),
            _ => None,
        };
        self.owed.extend(key);
    }

    /// Notes a frame received: the answer it settles, if any.
    fn received(&mut self, message: &Value) {
        let field = |name: &str| message.get(name);
        let keys = [
            (message.get("type").and_then(Value::as_str) == Some("welcome")).then(|| "hello".to_string()),
            field("sub").and_then(Value::as_str).map(|sub| format!("sub:{sub}")),
            field("mid").and_then(Value::as_u64).map(|mid| format!("mid:{mid}")),
            field("req").and_then(Value::as_u64).map(|req| format!("req:{req}")),
            (message.get("type").and_then(Value::as_str) == Some("pong"))
                .then(|| field("nonce").and_then(Value::as_u64).map(|nonce| format!("nonce:{nonce}")))
                .flatten(),
        ];
        for key in keys.into_iter().flatten() {
            self.owed.remove(&key);
        }
        // An error that names no request answers `hello` (hello_required, unsupported_protocol).
        if message.get("type").and_then(Value::as_str) == Some("error")
            && ["mid", "sub", "req"].iter().all(|name| field(name).is_none())
        {
            self.owed.remove("hello");
        }
    }
}

/// What a typed line asks for.
enum Input {
    /// Send this text.
    Send(String),
    /// Print this to the notes and send nothing.
    Note(String),
    /// Close the connection.
    Quit,
}

/// `count` words from the front of `text`, and the rest (trimmed), if there are that many.
fn words(text: &str, count: usize) -> Option<(Vec<&str>, &str)> {
    let mut rest = text.trim_start();
    let mut found = Vec::new();
    for _ in 0..count {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        found.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    Some((found, rest.trim_end()))
}

/// Turns a typed line into what to send; a short command becomes a message that the protocol's
/// own decoder has checked, so a typing mistake is explained here instead of sent.
fn parse_line(line: &str, tracker: &mut Tracker) -> Input {
    let line = line.trim();
    if line.starts_with('{') {
        return Input::Send(line.to_string());
    }
    let (command, rest) = words(line, 1).map(|(w, rest)| (w[0], rest)).unwrap_or(("", ""));
    let json_of = |text: &str| {
        serde_json::from_str::<Value>(text).map_err(|e| crate::frame_command::plain_json_error(&e))
    };
    let next_mid = tracker.mid + 1;
    let message = match (command, words(rest, 1), words(rest, 2)) {
        ("", ..) => return Input::Note(String::new()),
        ("help", ..) => return Input::Note(HELP.into()),
        ("quit" | "exit", ..) => return Input::Quit,
        ("ping", ..) => Ok(json!({"type": "ping", "nonce": tracker.nonce + 1})),
        ("sub", Some((id, target)), _) if target.starts_with('{') => {
            json_of(target).map(|query| json!({"type": "subscribe", "sub": id[0], "query": query}))
        }
        ("sub", Some((id, doc)), _) if !doc.is_empty() => Ok(json!({"type": "subscribe", "sub": id[0], "doc": doc})),
        ("unsub", Some((id, _)), _) => Ok(json!({"type": "unsubscribe", "sub": id[0]})),
        ("create", _, Some((w, data))) if !data.is_empty() => json_of(data).map(|data| {
            json!({"type": "mutate", "mid": next_mid, "op": "create", "doc": w[0], "doc_type": w[1], "data": data})
        }),
        ("put" | "patch", Some((doc, data)), _) if !data.is_empty() => {
            json_of(data).map(|data| json!({"type": "mutate", "mid": next_mid, "op": command, "doc": doc[0], "data": data}))
        }
        ("remove", Some((doc, _)), _) => Ok(json!({"type": "mutate", "mid": next_mid, "op": "remove", "doc": doc[0]})),
        ("sub" | "unsub" | "create" | "put" | "patch" | "remove", ..) => {
            return Input::Note(format!("{command}: missing arguments; type help for the forms"))
        }
        _ => return Input::Note(format!("unknown command {command:?}; type help, or a JSON message")),
    };
    let message = match message {
        Ok(message) => message.to_string(),
        Err(why) => return Input::Note(format!("not sent: the JSON is not valid: {why}")),
    };
    match crate::frame_command::judge(&message, usize::MAX) {
        crate::frame_command::Verdict::Ok(_) => Input::Send(message),
        crate::frame_command::Verdict::Refused(code, why) => {
            Input::Note(format!("not sent: a server would answer {code}: {why}"))
        }
    }
}

/// A close code in words, with what to do about it (docs/PROTOCOL.md §2).
fn close_words(number: u16) -> &'static str {
    use roomlab_protocol::CloseCode;
    let Some(code) = CloseCode::from_number(number) else {
        return if number == 1005 { "no code given" } else { "a code the protocol does not define" };
    };
    match code {
        CloseCode::Normal => "normal closure",
        CloseCode::GoingAway => "the server is going away (shutting down); reconnect later",
        CloseCode::InvalidText => "a text frame was not valid UTF-8",
        CloseCode::PolicyViolation => "no hello was sent within the server's deadline",
        CloseCode::TooLarge => "a frame was too large for the server",
        CloseCode::InternalError => "the room failed (a mutation was answered internal, or a commit failed); reconnect and resend what was not acknowledged",
        CloseCode::TryAgainLater => "the server holds as many connections as it may; reconnect later",
        CloseCode::Unauthorized => "unauthorized: the token is missing, forged, expired or for another room; mint a new one",
        CloseCode::UnsupportedProtocol => "the server does not speak this protocol version",
        CloseCode::SlowConsumer => "slow consumer: too many messages were waiting for this connection",
    }
}

/// Why a connection could not be opened, in words.
fn connect_failure(url: &str, error: WsError) -> anyhow::Error {
    // The address without its query: the token is a credential.
    let shown = url.split('?').next().unwrap_or(url);
    match error {
        WsError::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .trim()
                .to_string();
            let hint = if response.status().as_u16() == 401 {
                "; mint a token for this room with the server's secret (`roomlab token --room ROOM --user USER`)"
            } else {
                ""
            };
            anyhow::anyhow!("the server refused the connection: HTTP {} {body}{hint}", response.status())
        }
        WsError::Io(io) => {
            anyhow::anyhow!("cannot connect to {shown}: {io} (is `roomlab serve` running there?)")
        }
        other => anyhow::anyhow!("cannot connect to {shown}: {other}"),
    }
}

/// Writes a received text frame as indented JSON (as it came, if it is not JSON).
fn print_frame(out: &mut dyn Write, text: &str) -> Option<Value> {
    let value = serde_json::from_str::<Value>(text).ok();
    let shown =
        value.as_ref().and_then(|v| serde_json::to_string_pretty(v).ok()).unwrap_or_else(|| text.to_string());
    let _ = writeln!(out, "{shown}");
    let _ = out.flush();
    value
}

/// One session: connects to `url`, says hello as `client`, then sends each line that `input`
/// yields and writes every frame received to `out`, until `input` ends (then it waits for the
/// answers it is owed, closes, and returns [`Ending::ClientClosed`]) or the server closes.
pub async fn session(
    url: &str,
    client: &str,
    mut input: mpsc::Receiver<String>,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<Ending> {
    let (socket, _) =
        tokio_tungstenite::connect_async(url).await.map_err(|error| connect_failure(url, error))?;
    let (mut sink, mut stream) = socket.split();
    let mut tracker = Tracker::default();
    let hello = ClientMessage::Hello {
        protocol: PROTOCOL_VERSION,
        client: roomlab_protocol::ClientId::new(client)
            .map_err(|e| usage(format!("--client {client:?}: {e}")))?,
    };
    let hello = roomlab_protocol::encode(&hello);
    tracker.sent(&serde_json::from_str(&hello)?);
    sink.send(Message::text(hello)).await?;
    let _ = writeln!(notes, "connected as client {client}; type help for commands");
    let (mut input_open, mut last_frame) = (true, Instant::now());
    let mut input_ended = Instant::now();
    loop {
        let deadline = match tracker.owed.is_empty() {
            true => last_frame.max(input_ended) + QUIET_WAIT,
            false => input_ended + ANSWER_WAIT,
        };
        tokio::select! {
            line = input.recv(), if input_open => {
                let input = match line {
                    Some(line) => parse_line(&line, &mut tracker),
                    None => Input::Quit,
                };
                match input {
                    Input::Send(text) => {
                        if let Ok(value) = serde_json::from_str::<Value>(&text) {
                            tracker.sent(&value);
                        }
                        let _ = writeln!(notes, "> {text}");
                        sink.send(Message::text(text)).await?;
                    }
                    Input::Note(note) if note.is_empty() => {}
                    Input::Note(note) => { let _ = writeln!(notes, "{note}"); }
                    Input::Quit => { input_open = false; input_ended = Instant::now(); }
                }
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    last_frame = Instant::now();
                    if let Some(value) = print_frame(out, &text) {
                        tracker.received(&value);
                    }
                }
                Some(Ok(Message::Binary(bytes))) => { let _ = writeln!(notes, "(a binary Yjs frame of {} bytes)", bytes.len()); }
                Some(Ok(Message::Close(frame))) => return Ok(server_closed(frame, notes)),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Ok(broken(error.to_string(), notes)),
                None => return Ok(broken("the connection ended".into(), notes)),
            },
            _ = tokio::time::sleep_until(deadline), if !input_open => {
                return close(&mut sink, &mut stream, out, notes).await;
            }
        }
    }
}

fn server_closed(frame: Option<CloseFrame>, notes: &mut dyn Write) -> Ending {
    let (code, reason) =
        frame.map(|f| (u16::from(f.code), f.reason.as_str().to_string())).unwrap_or((1005, String::new()));
    let reason_text = if reason.is_empty() { String::new() } else { format!(" ({reason})") };
    let _ = writeln!(notes, "the server closed the connection: {code} {}{reason_text}", close_words(code));
    Ending::ServerClosed(code, reason)
}

fn broken(why: String, notes: &mut dyn Write) -> Ending {
    let _ = writeln!(notes, "the connection broke without a close frame: {why}");
    Ending::Broken(why)
}

/// Closes with 1000 and prints what arrives until the server's close frame (or [`CLOSE_WAIT`]).
async fn close<S, R>(
    sink: &mut S,
    stream: &mut R,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<Ending>
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
    R: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    let frame = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
    if sink.send(Message::Close(Some(frame))).await.is_err() {
        return Ok(Ending::ClientClosed);
    }
    let deadline = Instant::now() + CLOSE_WAIT;
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, stream.next()).await {
        match message {
            Message::Text(text) => {
                print_frame(out, &text);
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    let _ = writeln!(notes, "closed the connection (1000 normal closure)");
    Ok(Ending::ClientClosed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "connect-test-secret";

    /// The real server on a loopback port; its task ends with the test's runtime.
    async fn server(frame_bytes_max: usize) -> (u16, tempfile::TempDir) {
        let data = tempfile::tempdir().unwrap();
        let mut config = roomlab_server::ServerConfig::new(SECRET);
        config.data = Some(data.path().to_path_buf());
        config.engine.limits.frame_bytes_max = frame_bytes_max;
        let server = roomlab_server::Server::new(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(server.serve(listener, 1_000));
        (port, data)
    }

    fn token(room: &str) -> String {
        let claims = roomlab_server::Claims {
            sub: "u-1".into(),
            room: room.into(),
            role: roomlab_protocol::Role::Member,
            exp: 4_000_000_000,
            plan: None,
            addons: None,
        };
        roomlab_server::mint(SECRET.as_bytes(), &claims)
    }

    /// Runs a session against a fresh server with these typed lines, then checks that the frames
    /// printed contain `frames` in order, the notes contain each of `notes`, and how it ended.
    fn check(lines: &[&str], frames: &[&str], notes: &[&str], ending: Ending) {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (out, note_text, got) = runtime.block_on(async {
            let (port, _data) = server(4_096).await;
            let url =
                session_url(&format!("ws://127.0.0.1:{port}/ws/room-1"), Some(&token("room-1"))).unwrap();
            let (sender, input) = mpsc::channel(INPUT_QUEUE);
            for line in lines {
                sender.send(line.to_string()).await.unwrap();
            }
            drop(sender);
            let (mut out, mut note_text) = (Vec::new(), Vec::new());
            let got = session(&url, "connect-test", input, &mut out, &mut note_text).await.unwrap();
            (String::from_utf8(out).unwrap(), String::from_utf8(note_text).unwrap(), got)
        });
        // The reason of a close is the server's own wording; the code is what the protocol fixes.
        let got = match got {
            Ending::ServerClosed(code, _) => Ending::ServerClosed(code, String::new()),
            other => other,
        };
        let mut rest = out.as_str();
        for frame in frames {
            let at = rest.find(frame).unwrap_or_else(|| panic!("{frame:?} not in order in:\n{out}"));
            rest = &rest[at + frame.len()..];
        }
        for note in notes {
            assert!(note_text.contains(note), "{note:?} not in notes:\n{note_text}");
        }
        assert_eq!(got, ending, "frames:\n{out}\nnotes:\n{note_text}");
    }

    #[test]
    fn a_session_typed_by_hand() {
        check(
            &[r#"create t1 tasks {"title": "write docs"}"#, r#"sub q1 {"collection":"tasks"}"#, "ping"],
            &[
                "\"type\": \"welcome\"",
                "\"mid\": 1",
                "\"type\": \"ack\"",
                "\"title\": \"write docs\"",
                "\"type\": \"query:result\"",
                "\"nonce\": 1",
                "\"type\": \"pong\"",
            ],
            &["connected as client connect-test", "closed the connection (1000 normal closure)"],
            Ending::ClientClosed,
        );
    }

    #[test]
    fn raw_json_is_sent_as_it_is_and_numbering_follows_it() {
        check(
            &[
                r#"{"type":"mutate","mid":7,"op":"create","doc":"a","doc_type":"t","data":{}}"#,
                "remove a",
                "nonsense",
            ],
            &["\"mid\": 7", "\"type\": \"ack\"", "\"mid\": 8", "\"type\": \"ack\""],
            &[
                "unknown command \"nonsense\"",
                "> {\"doc\":\"a\",\"mid\":8,\"op\":\"remove\",\"type\":\"mutate\"}",
            ],
            Ending::ClientClosed,
        );
    }

    #[test]
    fn typing_mistakes_are_explained_and_not_sent() {
        check(
            &["create t1 tasks {oops}", r#"sub q1 {"collection":"tasks","limit":5000}"#, "put t1", "help"],
            &["\"type\": \"welcome\""],
            &[
                "not sent: the JSON is not valid",
                "not sent: a server would answer invalid",
                "put: missing arguments",
                "sub ID QUERY_JSON",
            ],
            Ending::ClientClosed,
        );
    }

    #[test]
    fn a_close_by_the_server_is_told_in_words() {
        let oversize = format!(r#"{{"type":"ping","nonce":1,"pad":"{}"}}"#, "x".repeat(5_000));
        check(
            &[oversize.as_str()],
            &["\"type\": \"welcome\""],
            &["the server closed the connection: 1009 a frame was too large"],
            Ending::ServerClosed(1009, String::new()),
        );
    }

    #[test]
    fn addresses_and_tokens_are_checked_before_connecting() {
        let check = |url: &str, token: Option<&str>, expected: &str| {
            let got = match session_url(url, token) {
                Ok(url) => url,
                Err(error) => error.to_string(),
            };
            assert!(got.contains(expected), "{url}: {got}");
        };
        check("ws://h:1/ws/r", Some("T"), "ws://h:1/ws/r?token=T");
        check("ws://h:1/ws/r?x=1", Some("T"), "ws://h:1/ws/r?x=1&token=T");
        check("ws://h:1/ws/r?token=T", None, "ws://h:1/ws/r?token=T");
        check("ws://h:1/ws/r", None, "give --token T");
        check("http://h:1/ws/r", Some("T"), "not a WebSocket address");
        check("wss://h:1/ws/r", Some("T"), "ws:// only");
    }
}
