//! Hostile clients: connections that send what a conforming client never sends (malformed,
//! oversized, deeply nested and invalid UTF-8 frames, Yjs decompression bombs, mutation ids at and
//! past every boundary, floods read by no one, silence), beside the well-behaved clients.
//!
//! Each attack runs on its own WebSocket from the `hostile` host. What its frames ask of the room
//! is journaled like any client's, so the history checker replays it through the oracle and judges
//! every frame the room sent back; the attack itself checks what the spec says of frames the room
//! never sees (the close codes of the transport and the survival of the connection). Meanwhile the
//! well-behaved clients' operations must keep completing ([`crate::Scenario::op_ms_max`]).

use crate::history::{Frame, Observed};
use crate::trace::SharedTrace;
use futures_util::{SinkExt, StreamExt};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use roomlab_protocol::{
    decode, encode, ClientId, ClientMessage, DocId, FieldName, Limits, Mutation, ServerMessage, SubId,
    Target, YjsFrame, MID_MAX, PROTOCOL_VERSION,
};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::Message;

/// Hostile connections are observed under indices from here on, apart from the clients'.
pub(crate) const HOSTILE_INDEX_BASE: usize = 1_000_000;

/// How long an attack waits for an answer the spec says comes at once.
const ANSWER_MS_MAX: u64 = 3_000;

/// Longer frames are summarised on the trace.
const TRACED_BYTES_MAX: usize = 4096;

/// How long a flood is left unread.
const FLOOD_UNREAD_MS: u64 = 4_000;

/// Frames a flood sends before it reads anything.
const FLOOD_FRAMES: u64 = 600;

/// One kind of hostile connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attack {
    /// Text that is not a message: not JSON, an unknown type, missing fields, a binary frame that
    /// is not a Yjs envelope; then a ping, which must still be answered.
    Garbage,
    /// A text frame whose bytes are not UTF-8.
    InvalidUtf8,
    /// A text frame one byte over `frame_bytes_max`.
    Oversized,
    /// Documents nested at the JSON depth limit, one past it, and far past it.
    Deep,
    /// Mutation ids at 2^53 − 1 and past it (2^53, 2^63, 2^64 − 1, 2^64), each sent twice.
    Mids,
    /// Yjs updates and state vectors whose counts claim billions of entries or client ids past
    /// 2^53, on a live rich-text field.
    YjsBomb,
    /// Hundreds of subscriptions and pings sent at once and left unread for seconds.
    Flood,
    /// A WebSocket that never says `hello`.
    Silent,
}

impl Attack {
    pub(crate) const ALL: [Attack; 8] = [
        Attack::Garbage,
        Attack::InvalidUtf8,
        Attack::Oversized,
        Attack::Deep,
        Attack::Mids,
        Attack::YjsBomb,
        Attack::Flood,
        Attack::Silent,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Attack::Garbage => "garbage",
            Attack::InvalidUtf8 => "invalid-utf8",
            Attack::Oversized => "oversized",
            Attack::Deep => "deep",
            Attack::Mids => "mids",
            Attack::YjsBomb => "yjs-bomb",
            Attack::Flood => "flood",
            Attack::Silent => "silent",
        }
    }
}

/// An attack the fault driver ordered.
#[derive(Debug, Clone)]
pub(crate) struct Order {
    pub attack: Attack,
    /// The connection's observed index (from [`HOSTILE_INDEX_BASE`]).
    pub index: usize,
    /// The WebSocket path, with a valid token of one of the room's users.
    pub path: String,
    /// Draws the attack's details.
    pub seed: u64,
}

/// What the attacks share: where they are ordered from and where they report.
#[derive(Clone)]
pub(crate) struct Hostile {
    orders: mpsc::UnboundedSender<Order>,
    /// What attacks found wrong, taken by the world loop as failures.
    pub findings: Rc<RefCell<Vec<String>>>,
    /// Rules the attacks checked, with how often.
    pub checked: Rc<RefCell<BTreeMap<&'static str, u64>>>,
    /// Attacks ordered and not yet over; a run ends only once every attack is.
    pub running: Rc<std::cell::Cell<usize>>,
    trace: SharedTrace,
}

/// Where an attack runs: the server's address and what it records to.
pub(crate) struct Context {
    pub server: (&'static str, u16),
    pub observed: Arc<Observed>,
    pub trace: SharedTrace,
    /// The `hello` deadline the server was given.
    pub hello_ms_max: u64,
    /// A live note with a rich-text field, for the Yjs bombs.
    pub note: (DocId, FieldName),
}

impl Hostile {
    /// The shared state and the future the `hostile` host runs: it starts each ordered attack.
    pub(crate) fn new(context: Context) -> (Hostile, impl std::future::Future<Output = turmoil::Result>) {
        let (orders, mut inbox) = mpsc::unbounded_channel::<Order>();
        let trace = context.trace.clone();
        let hostile = Hostile {
            orders,
            findings: Rc::default(),
            checked: Rc::default(),
            running: Rc::default(),
            trace,
        };
        let shared = hostile.clone();
        let context = Rc::new(context);
        let host = async move {
            while let Some(order) = inbox.recv().await {
                let (context, shared) = (context.clone(), shared.clone());
                tokio::task::spawn_local(async move {
                    run(order, context, shared.clone()).await;
                    shared.running.set(shared.running.get() - 1);
                });
            }
            Ok(())
        };
        (hostile, host)
    }

    /// Orders an attack; it starts at the host's next turn.
    pub(crate) fn order(&self, order: Order) {
        self.running.set(self.running.get() + 1);
        let _ = self.orders.send(order);
    }

    fn found(&self, order: &Order, rule: &str, what: String) {
        let finding = format!(
            "{rule}: hostile connection h{} ({}): {what}",
            order.index - HOSTILE_INDEX_BASE,
            order.attack.name()
        );
        self.note(order, &format!("check {rule}: FAILED: {what}"));
        self.findings.borrow_mut().push(finding);
    }

    fn checked(&self, order: &Order, rule: &'static str) {
        self.note(order, &format!("check {rule}: passed"));
        *self.checked.borrow_mut().entry(rule).or_default() += 1;
    }

    fn note(&self, order: &Order, text: &str) {
        let actor = format!("h{}", order.index - HOSTILE_INDEX_BASE);
        self.trace.lock().expect("trace lock").record(now_ms(), &actor, text);
    }
}

type Socket = tokio_tungstenite::WebSocketStream<turmoil::net::TcpStream>;

/// One hostile WebSocket: every frame it sends that the room will take for a message (it decodes
/// as one) and every frame it receives is recorded for the history checker.
struct Connection {
    socket: Socket,
    index: usize,
    observed: Arc<Observed>,
    trace: SharedTrace,
    limits: Limits,
    /// The close code the server sent, once it did.
    closed: Option<u16>,
    received: Vec<ServerMessage>,
}

/// What reading found.
#[derive(Debug, PartialEq)]
enum Read {
    /// The wanted frame arrived.
    Found,
    /// The server closed the connection (with this code, if it gave one).
    Closed(Option<u16>),
    /// Nothing wanted arrived in time.
    TimedOut,
}

impl Connection {
    async fn open(order: &Order, context: &Context) -> std::io::Result<Connection> {
        let stream = turmoil::net::TcpStream::connect(context.server).await?;
        context.observed.opened_hostile(order.index, stream.local_addr()?, now_ms());
        let url = format!("ws://{}:{}{}", context.server.0, context.server.1, order.path);
        let (socket, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Connection {
            socket,
            index: order.index,
            observed: context.observed.clone(),
            trace: context.trace.clone(),
            limits: Limits::default(),
            closed: None,
            received: Vec::new(),
        })
    }

    /// Puts a line on the trace under this connection's name.
    fn note(&self, prefix: &str, text: &str) {
        let actor = format!("h{}", self.index - HOSTILE_INDEX_BASE);
        self.trace.lock().expect("trace lock").record_prefixed(now_ms(), &actor, prefix, text);
    }

    async fn text(&mut self, text: String) {
        if text.len() > TRACED_BYTES_MAX {
            self.note("> ", &format!("a text frame of {} bytes", text.len()));
        } else {
            self.note("> ", &text);
        }
        if decode(text.as_bytes(), self.limits.frame_bytes_max).is_ok() {
            self.observed.sent(self.index, Frame::Text(text.clone()));
        }
        let _ = self.socket.send(Message::text(text)).await;
    }

    async fn message(&mut self, message: &ClientMessage) {
        self.text(encode(message)).await;
    }

    async fn yjs(&mut self, frame: YjsFrame) {
        self.note("> ", &format!("Y {}/{} {:02x?}", frame.doc, frame.field, frame.payload));
        let bytes = frame.encode();
        self.observed.sent(self.index, Frame::Yjs(frame));
        let _ = self.socket.send(Message::binary(bytes)).await;
    }

    async fn raw(&mut self, what: &str, message: Message) {
        self.note("> ", what);
        let _ = self.socket.send(message).await;
    }

    /// Reads until `wanted` holds for a received message, the connection closes, or `ms` pass.
    async fn read_until(&mut self, ms: u64, wanted: impl Fn(&ServerMessage) -> bool) -> Read {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            if let Some(code) = self.closed {
                return Read::Closed(Some(code));
            }
            let next = match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return Read::TimedOut,
                Ok(next) => next,
            };
            match next {
                Some(Ok(Message::Text(text))) => {
                    self.note("< ", &text);
                    self.observed.received(self.index, Frame::Text(text.to_string()));
                    let Ok(message) = roomlab_protocol::decode_server(text.as_bytes(), usize::MAX) else {
                        continue;
                    };
                    if let ServerMessage::Welcome { limits, .. } = &message {
                        self.limits = limits.clone();
                    }
                    let found = wanted(&message);
                    self.received.push(message);
                    if found {
                        return Read::Found;
                    }
                }
                Some(Ok(Message::Binary(bytes))) => {
                    if let Ok(frame) = YjsFrame::decode(&bytes, usize::MAX) {
                        self.observed.received(self.index, Frame::Yjs(frame));
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|frame| u16::from(frame.code));
                    self.note("", &format!("closed by the server: {code:?}"));
                    self.closed = code.or(Some(1005));
                    self.observed.ended(self.index);
                    return Read::Closed(code);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    self.observed.ended(self.index);
                    return Read::Closed(None);
                }
            }
        }
    }

    async fn hello(&mut self, seed: u64) -> Read {
        let client = ClientId::new(format!("hostile-{seed:x}")).expect("a short client id");
        self.message(&ClientMessage::Hello { protocol: PROTOCOL_VERSION, client }).await;
        self.read_until(ANSWER_MS_MAX, |m| matches!(m, ServerMessage::Welcome { .. })).await
    }

    /// A ping, and whether its pong came (the connection survived what was sent before it).
    async fn still_answers(&mut self, nonce: u64) -> Read {
        self.message(&ClientMessage::Ping { nonce }).await;
        self.read_until(ANSWER_MS_MAX, |m| matches!(m, ServerMessage::Pong { nonce: n } if *n == nonce)).await
    }

    async fn close(mut self) {
        let _ = self.socket.close(None).await;
        self.observed.ended(self.index);
    }
}

fn now_ms() -> u64 {
    turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
}

async fn run(order: Order, context: Rc<Context>, hostile: Hostile) {
    let opened_ms = now_ms();
    context.trace.lock().expect("trace lock").record(
        opened_ms,
        &format!("h{}", order.index - HOSTILE_INDEX_BASE),
        &format!("hostile connection: {}", order.attack.name()),
    );
    let Ok(mut connection) = Connection::open(&order, &context).await else {
        // The server may be restarting or the link cut; an attack that cannot connect proves nothing.
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(order.seed);
    if order.attack == Attack::Silent {
        return silent(&order, &context, &hostile, connection, opened_ms).await;
    }
    if connection.hello(order.seed).await != Read::Found {
        return;
    }
    match order.attack {
        Attack::Garbage => garbage(&order, &hostile, &mut connection).await,
        Attack::InvalidUtf8 => {
            let bytes: &[u8] = &[b'{', 0xff, 0xfe, b'}'];
            let frame = WsFrame::message(bytes.to_vec(), OpCode::Data(Data::Text), true);
            connection.raw("a text frame that is not UTF-8: 7b ff fe 7d", Message::Frame(frame)).await;
            expect_close(&order, &hostile, &mut connection, 1007, "conn.invalid-text").await;
        }
        Attack::Oversized => {
            let pad = "x".repeat(connection.limits.frame_bytes_max);
            connection.text(format!(r#"{{"type":"ping","nonce":1,"pad":"{pad}"}}"#)).await;
            expect_close(&order, &hostile, &mut connection, 1009, "conn.oversize.closes").await;
        }
        Attack::Deep => deep(&order, &hostile, &mut connection, &mut rng).await,
        Attack::Mids => mids(&order, &hostile, &mut connection, &mut rng).await,
        Attack::YjsBomb => yjs_bomb(&order, &context, &hostile, &mut connection).await,
        Attack::Flood => flood(&order, &hostile, &mut connection, &mut rng).await,
        Attack::Silent => unreachable!("handled above"),
    }
    connection.close().await;
}

async fn expect_close(
    order: &Order,
    hostile: &Hostile,
    connection: &mut Connection,
    code: u16,
    rule: &'static str,
) {
    match connection.read_until(ANSWER_MS_MAX, |_| false).await {
        Read::Closed(Some(got)) if got == code => hostile.checked(order, rule),
        other => hostile.found(order, rule, format!("expected a close with {code}, got {other:?}")),
    }
}

/// conn.malformed.survives: each malformed frame is answered with `bad_frame`, and the connection
/// goes on.
async fn garbage(order: &Order, hostile: &Hostile, connection: &mut Connection) {
    let texts = [
        "not json".to_string(),
        r#"{"type":"no-such-type"}"#.to_string(),
        r#"{"type":"mutate"}"#.to_string(),
        "[1,2,3]".to_string(),
        r#"{"type":"subscribe","sub":"s","target":{"kind":"nothing"}}"#.to_string(),
    ];
    for text in texts {
        connection.text(text).await;
    }
    // A binary frame on the protocol socket that is not a Yjs envelope.
    connection
        .raw("a binary frame that is no Yjs envelope: 00 ff 13", Message::binary(vec![0x00, 0xff, 0x13]))
        .await;
    let before = bad_frames(&connection.received);
    if survives(order, hostile, connection, 7).await {
        expect_bad_frames(order, hostile, connection, before, 6, "conn.malformed.survives");
    }
}

fn bad_frames(received: &[ServerMessage]) -> usize {
    received
        .iter()
        .filter(
            |m| matches!(m, ServerMessage::Error(body) if body.code == roomlab_protocol::ErrorCode::BadFrame),
        )
        .count()
}

/// Documents nested at, just past and far past the JSON depth limit: the room judges what
/// decodes (the history checker holds it to the oracle), the rest is `bad_frame`; the connection
/// survives all of it.
async fn deep(order: &Order, hostile: &Hostile, connection: &mut Connection, rng: &mut ChaCha8Rng) {
    let depth_max = roomlab_protocol::JSON_DEPTH_MAX;
    for (k, depth) in [depth_max - 3, depth_max - 2, depth_max + 1, 4 * depth_max].into_iter().enumerate() {
        let mut data = serde_json::json!(1);
        for _ in 0..depth {
            data = serde_json::json!({ "a": data });
        }
        let doc = DocId::new(format!("h{}-{}-{k}", order.index - HOSTILE_INDEX_BASE, rng.next_u32() % 100))
            .expect("a short document id");
        let mutation = Mutation::Create { doc, doc_type: doc_type("tasks"), data };
        connection.message(&ClientMessage::Mutate { mid: 1 + k as u64, mutation }).await;
    }
    let before = bad_frames(&connection.received);
    if survives(order, hostile, connection, 8).await {
        // limits.json-depth: the two past the limit are malformed; the two within it are the
        // room's to judge (the oracle holds it to its answers).
        expect_bad_frames(order, hostile, connection, before, 2, "limits.json-depth");
    }
}

/// Of the frames sent since `before` bad frames had arrived, `count` were refused as malformed.
fn expect_bad_frames(
    order: &Order,
    hostile: &Hostile,
    connection: &Connection,
    before: usize,
    count: usize,
    rule: &'static str,
) {
    let answered = bad_frames(&connection.received) - before;
    if answered == count {
        hostile.checked(order, rule);
    } else {
        hostile.found(order, rule, format!("{count} malformed frames, {answered} bad_frame answers"));
    }
}

/// mutation.mid.range and mutation.replay: ids at the top of the range are taken and replayed
/// (the oracle judges both answers); ids past it are refused as malformed.
async fn mids(order: &Order, hostile: &Hostile, connection: &mut Connection, rng: &mut ChaCha8Rng) {
    let h = order.index - HOSTILE_INDEX_BASE;
    let tag = rng.next_u32() % 1000;
    let mids = [
        (MID_MAX - 1).to_string(),
        MID_MAX.to_string(),
        (MID_MAX + 1).to_string(),
        (1u64 << 63).to_string(),
        u64::MAX.to_string(),
        "18446744073709551616".to_string(),
        "-1".to_string(),
        "1.5".to_string(),
    ];
    for _round in 0..2 {
        for (k, mid) in mids.iter().enumerate() {
            // Each id creates its own document, so that each valid one is applied once.
            let doc = DocId::new(format!("h{h}-mids-{tag}-{k}")).expect("a short document id");
            let data = serde_json::json!({"title": "mids"});
            let create = ClientMessage::Mutate {
                mid: 0,
                mutation: Mutation::Create { doc, doc_type: doc_type("tasks"), data },
            };
            let template = encode(&create);
            assert!(template.contains(r#""mid":0"#), "a mutation encodes its mid as a number");
            connection.text(template.replacen(r#""mid":0"#, &format!(r#""mid":{mid}"#), 1)).await;
        }
    }
    let before = bad_frames(&connection.received);
    if survives(order, hostile, connection, 9).await {
        // Six of the eight ids are past 2^53 - 1 or no integer, each sent twice.
        expect_bad_frames(order, hostile, connection, before, 12, "mutation.mid.range");
    }
}

/// limits.decode-work: updates and state vectors whose counts the bytes cannot hold are refused
/// (the oracle judges the refusals), and the room goes on.
async fn yjs_bomb(order: &Order, context: &Context, hostile: &Hostile, connection: &mut Connection) {
    let (doc, field) = context.note.clone();
    let billions: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0x0f];
    let client_past: &[u8] = &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10];
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    // Sync step 2 and update (message 0, then 1 or 2) with four billion clients claimed.
    for step in [1u8, 2] {
        payloads.push([&[0, step][..], &[billions.len() as u8 + 1], billions, &[1]].concat());
    }
    // An update of one client claiming four billion blocks.
    payloads.push([&[0, 2, 10, 1], billions, &[7, 0, 0, 0]].concat());
    // A step 1 claiming four billion clients, and one naming a client id past 2^53.
    payloads.push([&[0, 0, 6], billions, &[1]].concat());
    payloads.push([&[0, 0, 11, 1], client_past, &[0, 0]].concat());
    // An update whose only client id is 2^53.
    payloads.push([&[0, 2, 12, 1, 1], client_past, &[0, 0]].concat());
    for payload in payloads {
        connection.yjs(YjsFrame { doc: doc.clone(), field: field.clone(), payload }).await;
    }
    let _ = survives(order, hostile, connection, 10).await;
}

/// conn.slow-consumer: a connection that asks for much and reads nothing is either served or
/// closed with 4008, and the others are not held up meanwhile (the world checks `op_ms_max`).
async fn flood(order: &Order, hostile: &Hostile, connection: &mut Connection, rng: &mut ChaCha8Rng) {
    let subscriptions = connection.limits.subscriptions_max as u64 + 2;
    for k in 0..FLOOD_FRAMES {
        if k < subscriptions {
            let doc = DocId::new(format!("t{}", rng.next_u32() % 40)).expect("a short document id");
            let sub = SubId::new(format!("f{k}")).expect("a short subscription id");
            connection.message(&ClientMessage::Subscribe { sub, target: Target::Doc(doc) }).await;
        } else {
            connection.message(&ClientMessage::Ping { nonce: 1000 + k }).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(FLOOD_UNREAD_MS)).await;
    let last = 1000 + FLOOD_FRAMES - 1;
    match connection
        .read_until(4 * ANSWER_MS_MAX, |m| matches!(m, ServerMessage::Pong { nonce } if *nonce == last))
        .await
    {
        Read::Found => hostile.checked(order, "conn.slow-consumer"),
        Read::Closed(Some(4008)) => hostile.checked(order, "conn.slow-consumer"),
        other => hostile.found(
            order,
            "conn.slow-consumer",
            format!("neither served nor closed with 4008: {other:?}"),
        ),
    }
}

/// conn.hello.deadline: a socket that never says `hello` is closed with 1008 once the deadline
/// passes.
async fn silent(
    order: &Order,
    context: &Context,
    hostile: &Hostile,
    mut connection: Connection,
    opened_ms: u64,
) {
    let wait_ms = context.hello_ms_max + ANSWER_MS_MAX;
    let read = connection.read_until(wait_ms, |_| false).await;
    let after_ms = now_ms() - opened_ms;
    match read {
        Read::Closed(Some(1008)) if after_ms >= context.hello_ms_max => {
            hostile.checked(order, "conn.hello.deadline")
        }
        other => hostile.found(
            order,
            "conn.hello.deadline",
            format!(
                "expected a close with 1008 {} ms after opening, got {other:?} after {after_ms} ms",
                context.hello_ms_max
            ),
        ),
    }
}

/// conn.malformed.survives: the connection still answers a ping after the attack.
async fn survives(order: &Order, hostile: &Hostile, connection: &mut Connection, nonce: u64) -> bool {
    match connection.still_answers(nonce).await {
        Read::Found => {
            hostile.checked(order, "conn.malformed.survives");
            true
        }
        other => {
            hostile.found(order, "conn.malformed.survives", format!("no pong after the attack: {other:?}"));
            false
        }
    }
}

fn doc_type(name: &str) -> roomlab_protocol::DocType {
    roomlab_protocol::DocType::new(name).expect("a valid type name")
}
