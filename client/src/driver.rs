//! The connection loop: connect, greet, resync, exchange frames, and reconnect with backoff.

use crate::core::Outgoing;
use crate::{Shared, TapEvent};
use futures_util::{SinkExt, StreamExt};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use roomlab_protocol::{decode_server, encode, YjsFrame};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Opens the byte stream a client speaks WebSocket over: tokio TCP, or turmoil's simulated TCP.
pub trait Connector: Send + Sync + 'static {
    /// The stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Connects to `host:port`.
    fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
}

/// Connects over tokio's TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioConnector;

impl Connector for TokioConnector {
    type Stream = tokio::net::TcpStream;
    async fn connect(&self, host: &str, port: u16) -> std::io::Result<Self::Stream> {
        let stream = tokio::net::TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The network or the server dropped us; reconnect.
    Dropped { resynced: bool },
    /// The server refused us for good (4001 unauthorized, 4002 protocol): stop.
    Refused(u16),
    /// The application closed the client.
    Closed,
}

/// Backoff before reconnect attempt `attempt` (0-based): 250 ms doubling to the cap, with "equal
/// jitter" (half fixed, half random) so that a storm of clients spreads out (client.reconnect.backoff).
pub fn backoff_ms(attempt: u32, initial_ms: u64, max_ms: u64, random: u64) -> u64 {
    let delay = initial_ms.saturating_mul(1u64 << attempt.min(20)).min(max_ms);
    let half = delay / 2;
    half + random % (delay - half + 1)
}

pub(crate) async fn drive<C: Connector>(shared: Arc<Shared>, connector: C) {
    let config = shared.config.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut attempt = 0u32;
    loop {
        if shared.control().stopped {
            return;
        }
        shared.tap(TapEvent::Connecting { attempt });
        match connect(&shared, &connector).await {
            Err(Failure::Unauthorized(reason)) => {
                shared.tap(TapEvent::Disconnected { reason: &reason });
                shared.set_refused(roomlab_protocol::CloseCode::Unauthorized.number());
                return;
            }
            Ok(ws) => match session(&shared, ws).await {
                End::Dropped { resynced } => {
                    if resynced {
                        attempt = 0;
                    }
                }
                End::Refused(code) => {
                    shared.set_refused(code);
                    return;
                }
                End::Closed => return,
            },
            Err(Failure::Network(reason)) => shared.tap(TapEvent::Disconnected { reason: &reason }),
        }
        shared.core().disconnected();
        shared.changed.notify_waiters();
        let delay = backoff_ms(attempt, config.backoff_initial_ms, config.backoff_max_ms, rng.next_u64());
        attempt = attempt.saturating_add(1);
        if !back_off(&shared, Duration::from_millis(delay)).await {
            return;
        }
    }
}

/// Waits out a reconnect delay; returns false when the application closed the client meanwhile.
/// Only a close cuts the wait short: the order that ended the session (a kill) may have left a
/// wake-up behind, and a reconnect without backoff is what a storm of clients must not do.
async fn back_off(shared: &Shared, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        let wake = shared.control_changed.notified();
        if shared.control().stopped {
            return false;
        }
        tokio::select! {
            biased;
            _ = wake => {}
            _ = tokio::time::sleep_until(deadline) => return true,
        }
    }
}

/// Why a connection attempt failed.
enum Failure {
    /// The network, or a server that is not there yet: retry.
    Network(String),
    /// HTTP 401 on the upgrade: this token will never work (conn.token.required).
    Unauthorized(String),
}

async fn connect<C: Connector>(
    shared: &Shared,
    connector: &C,
) -> Result<WebSocketStream<C::Stream>, Failure> {
    let config = &shared.config;
    let (host, port) = (&config.host, config.port);
    let deadline = Duration::from_millis(config.connect_timeout_ms);
    let stream = tokio::time::timeout(deadline, connector.connect(host, port))
        .await
        .map_err(|_| Failure::Network("connect timed out".into()))?
        .map_err(|e| Failure::Network(format!("connect failed: {e}")))?;
    let limits = WebSocketConfig::default()
        // tungstenite zero-fills its whole read buffer on every read; 128 KiB by default made
        // that fill most of the CPU time of a room with many small frames.
        .read_buffer_size(config.read_buffer_bytes)
        .max_message_size(Some(config.frame_bytes_max))
        .max_frame_size(Some(config.frame_bytes_max));
    let url = format!("ws://{host}:{port}{}", config.path);
    let handshake = tokio_tungstenite::client_async_with_config(url, stream, Some(limits));
    let (ws, _response) = tokio::time::timeout(deadline, handshake)
        .await
        .map_err(|_| Failure::Network("handshake timed out".into()))?
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(response) if response.status() == 401 => {
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                Failure::Unauthorized(format!("unauthorized: {body}"))
            }
            e => Failure::Network(format!("handshake failed: {e}")),
        })?;
    Ok(ws)
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(shared: &Shared, mut ws: WebSocketStream<S>) -> End {
    let hello = encode(&shared.core().connected());
    shared.tap(TapEvent::Connected);
    if send(shared, &mut ws, hello).await.is_err() {
        return End::Dropped { resynced: false };
    }
    let hello_deadline = Instant::now() + Duration::from_millis(shared.config.hello_timeout_ms);
    let mut resynced = false;
    let ping_every = Duration::from_millis(shared.config.ping_interval_ms);
    let silence_max = Duration::from_millis(shared.config.silence_ms_max);
    let mut heard = Instant::now();
    let mut pinged = heard;
    let mut nonce = 0u64;
    // One heartbeat timer for the whole session. Every frame heard moves the beat later, and a
    // timer made afresh for each frame costs a timer-wheel insertion and removal per frame;
    // instead the timer keeps an earlier deadline and, when it fires early, is set again to the
    // beat as it now stands (the beat only ever moves later, so the timer never fires after it).
    let beat_at = |heard: Instant, pinged: Instant| (heard.max(pinged) + ping_every).min(heard + silence_max);
    let beat = tokio::time::sleep_until(beat_at(heard, pinged));
    tokio::pin!(beat);
    loop {
        let wake = shared.wake.notified();
        let control_changed = shared.control_changed.notified();
        if let Some(end) = control_end(shared, &mut ws).await {
            return end;
        }
        let stalled_until = {
            let mut control = shared.control();
            if let Some(duration) = control.stall_ordered.take() {
                control.stalled_until = Some(Instant::now() + duration);
            }
            // A stall that ran out is over: forgotten, so that only a stalled client holds one.
            control.stalled_until = control.stalled_until.filter(|until| *until > Instant::now());
            control.stalled_until
        };
        let greeting = matches!(shared.core().link, crate::core::Link::Greeting);
        if flush(shared, &mut ws).await.is_err() {
            return End::Dropped { resynced };
        }
        // client.heartbeat: a connection can die without a close reaching us (a half-open TCP
        // connection behind a partition); silence first earns a ping, then a reconnect.
        let next_beat = beat_at(heard, pinged);
        let frame = tokio::select! {
            biased;
            _ = control_changed => continue,
            _ = wake => continue,
            _ = &mut beat => {
                if Instant::now() < next_beat {
                    beat.as_mut().reset(next_beat);
                    continue;
                }
                if heard.elapsed() >= silence_max {
                    shared.tap(TapEvent::Disconnected { reason: "server silent; reconnecting" });
                    return End::Dropped { resynced };
                }
                nonce += 1;
                pinged = Instant::now();
                beat.as_mut().reset(beat_at(heard, pinged));
                if send(shared, &mut ws, encode(&roomlab_protocol::ClientMessage::Ping { nonce })).await.is_err() {
                    return End::Dropped { resynced };
                }
                continue;
            }
            _ = tokio::time::sleep_until(hello_deadline), if greeting => {
                shared.tap(TapEvent::Disconnected { reason: "no welcome in time" });
                return End::Dropped { resynced };
            }
            _ = tokio::time::sleep_until(stalled_until.unwrap_or_else(Instant::now)), if stalled_until.is_some() => continue,
            frame = ws.next(), if stalled_until.is_none() => frame,
        };
        heard = Instant::now();
        match frame {
            Some(Ok(Message::Text(text))) => {
                shared.tap(TapEvent::Received(text.as_str()));
                let decoded = match &shared.config.decode_cache {
                    Some(cache) => cache.decode(text.as_bytes(), shared.config.frame_bytes_max),
                    None => decode_server(text.as_bytes(), shared.config.frame_bytes_max),
                };
                match decoded {
                    Ok(message) => {
                        let mut core = shared.core();
                        core.receive(message);
                        resynced |= core.resynced();
                    }
                    Err(e) => tracing::warn!("server sent a frame this client cannot read: {e}"),
                }
                shared.changed.notify_waiters();
            }
            Some(Ok(Message::Binary(bytes))) => {
                match YjsFrame::decode(&bytes, shared.config.frame_bytes_max) {
                    Ok(frame) => {
                        shared.tap(TapEvent::ReceivedYjs(&frame));
                        shared.core().receive_yjs(&frame);
                    }
                    Err(e) => tracing::warn!("server sent a binary frame this client cannot read: {e}"),
                }
                shared.changed.notify_waiters();
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.as_ref().map(|f| u16::from(f.code)).unwrap_or(1005);
                let reason = format!(
                    "closed by server: {code} {}",
                    frame.as_ref().map(|f| f.reason.as_str()).unwrap_or("")
                );
                shared.tap(TapEvent::Disconnected { reason: &reason });
                use roomlab_protocol::CloseCode;
                if matches!(
                    CloseCode::from_number(code),
                    Some(CloseCode::Unauthorized | CloseCode::UnsupportedProtocol)
                ) {
                    return End::Refused(code);
                }
                return End::Dropped { resynced };
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                shared.tap(TapEvent::Disconnected { reason: &format!("socket error: {e}") });
                return End::Dropped { resynced };
            }
            None => {
                shared.tap(TapEvent::Disconnected { reason: "socket ended" });
                return End::Dropped { resynced };
            }
        }
    }
}

/// Acts on the application's or the simulation's orders: close, or drop the socket abruptly.
async fn control_end<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    ws: &mut WebSocketStream<S>,
) -> Option<End> {
    let (stopped, kill) = {
        let mut control = shared.control();
        (control.stopped, std::mem::take(&mut control.kill))
    };
    if stopped {
        let _ = tokio::time::timeout(Duration::from_millis(1_000), ws.close(None)).await;
        shared.tap(TapEvent::Disconnected { reason: "closed by the application" });
        return Some(End::Closed);
    }
    if kill {
        shared.tap(TapEvent::Disconnected { reason: "connection killed" });
        return Some(End::Dropped { resynced: false });
    }
    None
}

async fn flush<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    ws: &mut WebSocketStream<S>,
) -> Result<(), ()> {
    loop {
        let Some(outgoing) = shared.core().outbox.pop_front() else { return Ok(()) };
        match outgoing {
            Outgoing::Text(message) => send(shared, ws, encode(&message)).await?,
            Outgoing::Yjs(frame) => {
                shared.tap(TapEvent::SentYjs(&frame));
                ws.send(Message::binary(frame.encode())).await.map_err(|_| ())?;
            }
        }
    }
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    ws: &mut WebSocketStream<S>,
    text: String,
) -> Result<(), ()> {
    shared.tap(TapEvent::Sent(&text));
    ws.send(Message::text(text)).await.map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_250_ms_to_30_s_with_jitter_in_the_upper_half() {
        let check =
            |attempt, random, expected| assert_eq!(backoff_ms(attempt, 250, 30_000, random), expected);
        check(0, 0, 125);
        check(0, 125, 250);
        check(1, 0, 250);
        check(3, 1_000, 2_000);
        check(7, 0, 15_000);
        check(8, 0, 15_000);
        check(30, u64::MAX, 15_000 + u64::MAX % 15_001);
        for attempt in 0..40 {
            for random in [0, 1, 77, u64::MAX] {
                assert!(backoff_ms(attempt, 250, 30_000, random) <= 30_000);
            }
        }
    }
}
