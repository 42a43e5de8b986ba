//! One WebSocket connection: frames in to the room, the room's frames out, heartbeats, limits.

use crate::buggify::FaultPoint;
use crate::rooms::{error_frame, CloseOrder, Input, Outbound, Outbox};
use crate::Server;
use futures_util::{SinkExt, StreamExt};
use roomlab_engine::{ConnId, Identity};
use roomlab_protocol::{
    decode, ClientId, ClientMessage, CloseCode, DecodeError, DocId, ErrorCode, FieldName, RoomId, YjsFrame,
    PROTOCOL_VERSION,
};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Which endpoint a connection came in on.
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    /// The protocol socket `/ws/{room}`: JSON text frames and enveloped Yjs binary frames.
    Protocol,
    /// The y-websocket socket `/yjs/{room}/{doc}/{field}`: bare y-protocols binary frames for one field.
    Yjs { doc: DocId, field: FieldName },
}

/// How long a close frame may take to leave before the socket is dropped anyway.
const CLOSE_SEND_MS_MAX: u64 = 1_000;

/// How many queued frames one socket write may carry. Bounded so a connection with a long queue
/// still notices a close order between writes.
const WRITE_BATCH_FRAMES_MAX: usize = 64;

/// How long the close frame of a slow consumer may wait to leave. Its socket buffers are full
/// when the queue overflows, so the frame leaves only once the peer reads again; a peer that does
/// within this time learns why it was closed (4008) instead of seeing the stream end. The queue is
/// already dropped, so waiting holds only the socket.
const SLOW_CONSUMER_CLOSE_MS_MAX: u64 = 10_000;

pub(crate) async fn run<S>(
    server: Server,
    ws: WebSocketStream<S>,
    who: (RoomId, Identity, Option<std::net::SocketAddr>),
    endpoint: Endpoint,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if !server.connection_opened() {
        let (mut sink, _) = ws.split();
        let _ = send_close(&mut sink, CloseCode::TryAgainLater, "too many connections").await;
        return;
    }
    serve_connection(&server, ws, who, endpoint).await;
    server.connection_closed();
}

async fn serve_connection<S>(
    server: &Server,
    ws: WebSocketStream<S>,
    (room_id, identity, peer): (RoomId, Identity, Option<std::net::SocketAddr>),
    endpoint: Endpoint,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = server.next_conn();
    let limits = server.config().engine.limits.clone();
    let (messages, outbound) = mpsc::channel(limits.outbound_queue_max);
    let (close, close_orders) = watch::channel::<CloseOrder>(None);
    let outbox = Outbox {
        messages,
        close,
        queued_bytes: std::sync::Arc::default(),
        queued_bytes_max: limits.outbound_bytes_max,
    };
    let (mut sink, mut stream) = ws.split();
    let inputs = match server.room(&room_id) {
        Ok((inputs, _room)) => inputs,
        Err(e) => {
            // The cause can name the server's files; it goes to the log, not to the peer.
            tracing::warn!(room = %room_id, "room unavailable: {e}");
            let _ = send_close(&mut sink, CloseCode::InternalError, "room unavailable").await;
            return;
        }
    };
    if inputs.send(Input::Connect { conn, identity, peer, outbox: outbox.clone() }).await.is_err() {
        let _ = send_close(&mut sink, CloseCode::GoingAway, "room closing").await;
        return;
    }
    if let Endpoint::Yjs { .. } = endpoint {
        // Stock y-websocket clients never greet; the server greets for them with a client id of
        // its own, and drops the JSON answers they could not read.
        let client = ClientId::new(format!("yjs-{}", conn.0)).expect("valid client id");
        let hello = ClientMessage::Hello { protocol: PROTOCOL_VERSION, client };
        let _ = inputs.send(Input::Message { conn, message: hello }).await;
    }
    let reader = read_loop(server, conn, &mut stream, &inputs, &outbox, &endpoint);
    let mut outbound = outbound;
    let writer = write_loop(&mut sink, (&mut outbound, &outbox), close_orders.clone(), &endpoint);
    tokio::select! {
        biased;
        _ = reader => {}
        _ = writer => {}
    }
    let _ = inputs.send(Input::Disconnect { conn }).await;
    let order = close_orders.borrow().clone();
    let (code, reason) = order.unwrap_or((CloseCode::Normal, String::new()));
    // What the room answered before it asked for the close (unsupported_protocol before 4002,
    // say) still leaves first; a slow consumer's queue is what it could not take, so it is dropped,
    // and its close frame waits for the peer to read again.
    let close_ms_max = if code == CloseCode::SlowConsumer {
        SLOW_CONSUMER_CLOSE_MS_MAX
    } else {
        let deadline = Duration::from_millis(CLOSE_SEND_MS_MAX);
        let _ = tokio::time::timeout(deadline, flush(&mut sink, &mut outbound, &endpoint)).await;
        CLOSE_SEND_MS_MAX
    };
    let _ = send_close_within(&mut sink, code, &reason, close_ms_max).await;
    if let Ok(ws) = stream.reunite(sink) {
        linger(ws).await;
    }
}

/// Reads and drops what the peer is still sending, until it closes or a deadline passes, after
/// every close. Closing a socket on unread bytes makes the kernel reset the connection, and a reset
/// can overtake what was sent before it: the peer would lose the last answers and the close frame.
/// A client pipelines (the rest of an oversize frame, the requests after a mutation answered
/// `internal`), so there are often unread bytes; the power-loss sweep's seed 0x16f1 lost a 1011
/// close and the three answers before it this way.
async fn linger<S>(mut ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let drain = async {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(read) = ws.get_mut().read(&mut buffer).await {
            if read == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(CLOSE_SEND_MS_MAX), drain).await;
}

/// Sends every frame already queued, without waiting for more.
async fn flush<S>(
    sink: &mut futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    outbound: &mut mpsc::Receiver<Outbound>,
    endpoint: &Endpoint,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Ok(frame) = outbound.try_recv() {
        if let Some(message) = to_message(frame, endpoint) {
            if sink.send(message).await.is_err() {
                return;
            }
        }
    }
}

/// The WebSocket message for a queued frame on this endpoint; `None` for JSON that a bare
/// y-websocket peer could not read.
fn to_message(frame: Outbound, endpoint: &Endpoint) -> Option<Message> {
    Some(match (frame, endpoint) {
        (Outbound::Text(text), Endpoint::Protocol) => Message::Text(text),
        (Outbound::Text(_), Endpoint::Yjs { .. }) => return None,
        (Outbound::Yjs(frame), Endpoint::Protocol) => Message::binary(frame.encode()),
        (Outbound::Yjs(frame), Endpoint::Yjs { .. }) => Message::binary(frame.payload),
        (Outbound::Ping, _) => Message::Ping(Default::default()),
    })
}

async fn read_loop<S>(
    server: &Server,
    conn: ConnId,
    stream: &mut futures_util::stream::SplitStream<WebSocketStream<S>>,
    inputs: &mpsc::Sender<Input>,
    outbox: &Outbox,
    endpoint: &Endpoint,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = server.config();
    let frame_bytes_max = config.engine.limits.frame_bytes_max;
    let ping_every = Duration::from_millis(config.ping_interval_ms);
    let mut stopping = server.shutdown_signal();
    let mut pings = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut heard = Instant::now();
    // Stock y-websocket clients are greeted by the server; a protocol client greets itself.
    let mut greeted = matches!(endpoint, Endpoint::Yjs { .. });
    let hello_deadline = tokio::time::sleep(Duration::from_millis(config.hello_ms_max));
    tokio::pin!(hello_deadline);
    loop {
        let frame = tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => {
                outbox.order_close(CloseCode::GoingAway, "server shutting down");
                return;
            }
            _ = &mut hello_deadline, if !greeted => {
                outbox.order_close(CloseCode::PolicyViolation, "no hello in time");
                return;
            }
            frame = stream.next() => frame,
            _ = pings.tick() => {
                let early = config.buggify.as_ref().is_some_and(|b| b.fire(FaultPoint::SilenceEarly));
                if early || heard.elapsed() > Duration::from_millis(config.silence_close_ms) {
                    outbox.order_close(CloseCode::GoingAway, "no answer to pings");
                    return;
                }
                let _ = outbox.messages.try_send(Outbound::Ping);
                continue;
            }
        };
        heard = Instant::now();
        let input = match frame {
            None | Some(Ok(Message::Close(_))) => return,
            Some(Err(WsError::Capacity(_))) => {
                outbox.order_close(CloseCode::TooLarge, "frame too large");
                return;
            }
            Some(Err(WsError::Utf8(_))) => {
                // RFC 6455 7.4.1: 1007 is the close code for a text frame that is not UTF-8.
                outbox.order_close(CloseCode::InvalidText, "text frame is not valid UTF-8");
                return;
            }
            Some(Err(_)) => return,
            Some(Ok(Message::Text(text))) if matches!(endpoint, Endpoint::Protocol) => {
                match decode(text.as_bytes(), frame_bytes_max) {
                    Ok(message) => {
                        greeted |= matches!(message, ClientMessage::Hello { .. });
                        Input::Message { conn, message }
                    }
                    Err(DecodeError::TooLarge { .. }) => {
                        outbox.order_close(CloseCode::TooLarge, "frame too large");
                        return;
                    }
                    Err(e) => {
                        answer_bad_frame(outbox, &e.to_string());
                        continue;
                    }
                }
            }
            Some(Ok(Message::Binary(bytes))) => match endpoint {
                Endpoint::Protocol => match YjsFrame::decode(&bytes, frame_bytes_max) {
                    Ok(frame) => Input::Yjs { conn, frame },
                    Err(e) => {
                        answer_bad_frame(outbox, &e.to_string());
                        continue;
                    }
                },
                Endpoint::Yjs { doc, field } => Input::Yjs {
                    conn,
                    frame: YjsFrame { doc: doc.clone(), field: field.clone(), payload: bytes.to_vec() },
                },
            },
            Some(Ok(_)) => continue,
        };
        if inputs.send(input).await.is_err() {
            outbox.order_close(CloseCode::GoingAway, "room closed");
            return;
        }
    }
}

fn answer_bad_frame(outbox: &Outbox, why: &str) {
    outbox.deliver(error_frame(ErrorCode::BadFrame, why));
}

async fn write_loop<S>(
    sink: &mut futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    (outbound, outbox): (&mut mpsc::Receiver<Outbound>, &Outbox),
    mut close_orders: watch::Receiver<CloseOrder>,
    endpoint: &Endpoint,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let frame = tokio::select! {
            biased;
            _ = close_orders.changed() => return,
            frame = outbound.recv() => match frame {
                Some(frame) => frame,
                None => return,
            },
        };
        // Every frame already queued goes out with this one in a single write: a change that
        // reaches a connection as several pushes costs one socket write, not one per push.
        let mut bytes = frame.bytes();
        let mut batch: Vec<Message> = to_message(frame, endpoint).into_iter().collect();
        while batch.len() < WRITE_BATCH_FRAMES_MAX {
            let Ok(frame) = outbound.try_recv() else { break };
            bytes += frame.bytes();
            batch.extend(to_message(frame, endpoint));
        }
        if batch.is_empty() {
            outbox.written(bytes);
            continue;
        }
        // A peer that stops reading blocks this write; a close order still ends the connection.
        tokio::select! {
            biased;
            _ = close_orders.changed() => return,
            sent = send_all(sink, batch) => if sent.is_err() { return },
        }
        outbox.written(bytes);
    }
}

/// Buffers every message, then flushes them to the socket together.
async fn send_all<S>(
    sink: &mut futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    batch: Vec<Message>,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for message in batch {
        sink.feed(message).await?;
    }
    sink.flush().await
}

/// Sends a close frame, giving up after `CLOSE_SEND_MS_MAX`.
async fn send_close<S>(
    sink: &mut futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    code: CloseCode,
    reason: &str,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send_close_within(sink, code, reason, CLOSE_SEND_MS_MAX).await
}

/// Sends a close frame, giving up after `deadline_ms`.
async fn send_close_within<S>(
    sink: &mut futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    code: CloseCode,
    reason: &str,
    deadline_ms: u64,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame { code: code.number().into(), reason: reason.to_string().into() };
    let deadline = Duration::from_millis(deadline_ms);
    match tokio::time::timeout(deadline, sink.send(Message::Close(Some(frame)))).await {
        Ok(sent) => sent,
        Err(_) => Ok(()),
    }
}
