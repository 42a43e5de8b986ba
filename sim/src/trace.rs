//! The run's trace: every frame a client sent or received, every fault and every check, with
//! simulated time. Its hash is the run's fingerprint for the determinism check.

use std::sync::{Arc, Mutex};

/// One event of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Simulated milliseconds since the start.
    pub time_ms: u64,
    /// Who: `c17` for a client, `world` for faults and checks.
    pub actor: String,
    /// What, for humans: a frame (`> ...` sent, `< ...` received), a fault or a check.
    pub text: String,
}

/// The trace: a rolling hash of every event, and the events themselves when kept.
#[derive(Debug, Default)]
pub struct Trace {
    hash: u64,
    count: u64,
    frames: FrameCounts,
    keep: bool,
    events: Vec<Event>,
    /// Rolling hashes after each event, to find the first divergence between two runs.
    checkpoints: Vec<u64>,
    /// Broken rules seen on the wire as frames arrived, each a sentence (bounded): private
    /// documents delivered to users who may not read them, frames after an `internal` answer.
    wire_failures: Vec<String>,
}

/// The protocol's text frames the clients sent and received (Yjs frames are not counted): what a
/// run's fan-out costs, for the benches that compare the simulation with its floor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrameCounts {
    /// Text frames the clients sent.
    pub sent: u64,
    /// Text frames the clients received.
    pub received: u64,
    /// Bytes of the text frames the clients received.
    pub received_bytes: u64,
}

impl std::ops::AddAssign for FrameCounts {
    fn add_assign(&mut self, more: FrameCounts) {
        self.sent += more.sent;
        self.received += more.received;
        self.received_bytes += more.received_bytes;
    }
}

impl std::iter::Sum for FrameCounts {
    fn sum<I: Iterator<Item = FrameCounts>>(counts: I) -> FrameCounts {
        counts.fold(FrameCounts::default(), |mut total, more| {
            total += more;
            total
        })
    }
}

/// Wire failures remembered at most.
const WIRE_FAILURES_MAX: usize = 10;

/// A trace shared by every client's tap and the world.
pub type SharedTrace = Arc<Mutex<Trace>>;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x100_0000_01b3;

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
    }
    hash
}

impl Trace {
    /// A trace that keeps its events (for `--trace` and the determinism check) or only its hash.
    pub fn new(keep: bool) -> Trace {
        Trace { hash: FNV_OFFSET, keep, ..Trace::default() }
    }

    /// Records an event.
    pub fn record(&mut self, time_ms: u64, actor: &str, text: &str) {
        self.record_prefixed(time_ms, actor, "", text);
    }

    /// Records the event `prefix` + `text`, without joining them unless the events are kept (a
    /// frame is recorded as "< " or "> " and the frame; most runs keep only the hash).
    pub fn record_prefixed(&mut self, time_ms: u64, actor: &str, prefix: &str, text: &str) {
        self.hash = fnv(self.hash, &time_ms.to_le_bytes());
        self.hash = fnv(self.hash, actor.as_bytes());
        self.hash = fnv(fnv(fnv(self.hash, &[0]), prefix.as_bytes()), text.as_bytes());
        self.count += 1;
        match prefix {
            "> " => self.frames.sent += 1,
            "< " => {
                self.frames.received += 1;
                self.frames.received_bytes += text.len() as u64;
            }
            _ => {}
        }
        if self.keep {
            self.checkpoints.push(self.hash);
            let text = format!("{prefix}{text}");
            self.events.push(Event { time_ms, actor: actor.to_string(), text });
        }
    }

    /// Records a rule broken on the wire, as a sentence naming its kind.
    pub(crate) fn record_wire_failure(&mut self, text: String) {
        if self.wire_failures.len() < WIRE_FAILURES_MAX {
            self.wire_failures.push(text);
        }
    }

    /// The rules seen broken on the wire so far.
    pub(crate) fn wire_failures(&self) -> &[String] {
        &self.wire_failures
    }

    /// The hash of every event so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Events recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The text frames counted so far.
    pub fn frames(&self) -> FrameCounts {
        self.frames
    }

    /// The kept events.
    #[cfg(test)]
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Takes the kept events.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

/// The first event at which two kept traces differ, with its index, or `None` when they agree.
pub fn first_divergence(a: &[Event], b: &[Event]) -> Option<(usize, Option<Event>, Option<Event>)> {
    let index = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))?;
    Some((index, a.get(index).cloned(), b.get(index).cloned()))
}

/// The trace as Chrome / Perfetto trace-event JSON: one instant event per frame, fault and check,
/// one track (thread) per actor, so a run can be opened in ui.perfetto.dev. A frame's event is
/// named by its direction and type (`< query:diff`) and carries the frame itself as its argument,
/// as JSON rather than as an escaped string, which keeps the file smaller.
pub fn perfetto_json(events: &[Event]) -> String {
    let mut tracks: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for event in events {
        let next = tracks.len() + 1;
        tracks.entry(event.actor.as_str()).or_insert(next);
    }
    let mut out = Vec::with_capacity(events.len() + tracks.len());
    for (actor, tid) in &tracks {
        out.push(serde_json::json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": {"name": actor}}));
    }
    for event in events {
        let (category, name, args) = perfetto_parts(&event.text);
        out.push(serde_json::json!({
            "ph": "i", "s": "t", "pid": 1, "tid": tracks[event.actor.as_str()],
            "ts": event.time_ms * 1000, "cat": category, "name": name, "args": args,
        }));
    }
    serde_json::json!({ "traceEvents": out, "displayTimeUnit": "ms" }).to_string()
}

/// An event's category, name and arguments: a text frame is named by direction and type with the
/// frame as JSON; anything else (faults, checks, Yjs frames, connection events) by its first 80
/// characters with the whole text.
fn perfetto_parts(text: &str) -> (&'static str, String, serde_json::Value) {
    let frame = text.split_once(' ').filter(|(head, _)| *head == ">" || *head == "<");
    let Some((direction, frame)) = frame else {
        return ("world", text.chars().take(80).collect(), serde_json::json!({ "text": text }));
    };
    match serde_json::from_str::<serde_json::Value>(frame) {
        Ok(frame @ serde_json::Value::Object(_)) => {
            let kind = frame.get("type").and_then(serde_json::Value::as_str).unwrap_or("frame");
            ("frame", format!("{direction} {kind}"), serde_json::json!({ "frame": frame }))
        }
        _ => ("frame", text.chars().take(80).collect(), serde_json::json!({ "text": text })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_follows_every_event_and_divergence_is_located() {
        let run = |texts: &[&str]| {
            let mut trace = Trace::new(true);
            for (i, text) in texts.iter().enumerate() {
                trace.record(i as u64, "c1", text);
            }
            trace
        };
        let (a, b, c) = (run(&["> x", "< y"]), run(&["> x", "< y"]), run(&["> x", "< z"]));
        assert_eq!(a.hash(), b.hash());
        // A frame recorded with its direction apart is the same event as the joined text.
        let mut parts = Trace::new(true);
        parts.record_prefixed(0, "c1", "> ", "x");
        parts.record_prefixed(1, "c1", "< ", "y");
        assert_eq!((parts.hash(), parts.events()), (a.hash(), a.events()));
        assert_ne!(a.hash(), c.hash());
        assert_eq!(first_divergence(a.events(), b.events()), None);
        let (index, left, _) = first_divergence(a.events(), c.events()).unwrap();
        assert_eq!((index, left.unwrap().text.as_str()), (1, "< y"));
        assert_eq!(first_divergence(a.events(), &a.events()[..1]).map(|d| d.0), Some(1));
        let json: serde_json::Value = serde_json::from_str(&perfetto_json(a.events())).unwrap();
        assert_eq!(json["traceEvents"].as_array().unwrap().len(), 3);
        // A text frame is named by its direction and type and carried as JSON; other lines whole.
        let mut frames = Trace::new(true);
        frames.record_prefixed(5, "c1", "< ", r#"{"type":"pong","nonce":3}"#);
        frames.record(6, "world", "buggify:room-stall fired");
        let json: serde_json::Value = serde_json::from_str(&perfetto_json(frames.events())).unwrap();
        let events = json["traceEvents"].as_array().unwrap();
        assert_eq!(events[2]["name"], "< pong");
        assert_eq!(events[2]["args"]["frame"]["nonce"], 3);
        assert_eq!(events[3]["args"]["text"], "buggify:room-stall fired");
        assert_eq!((events[3]["cat"].as_str(), events[3]["ts"].as_u64()), (Some("world"), Some(6000)));
    }

    /// Frames are counted by direction as the taps record them; faults, checks and Yjs lines
    /// (recorded whole) are not protocol text frames.
    #[test]
    fn text_frames_are_counted_by_direction() {
        let mut trace = Trace::new(false);
        trace.record_prefixed(0, "c1", "> ", r#"{"type":"ping"}"#);
        trace.record_prefixed(1, "c1", "< ", r#"{"type":"pong"}"#);
        trace.record_prefixed(2, "c2", "< ", "12345");
        trace.record(3, "c2", "< Y d1/text update 9 bytes #00");
        trace.record(4, "world", "kill c2");
        let frames = trace.frames();
        assert_eq!((frames.sent, frames.received, frames.received_bytes), (1, 2, 15 + 5));
        assert_eq!(trace.count(), 5);
        // Runs' counts add up field by field (a sweep's summary sums them).
        let total: FrameCounts = [frames, frames].into_iter().sum();
        assert_eq!(total, FrameCounts { sent: 2, received: 4, received_bytes: 40 });
    }
}
