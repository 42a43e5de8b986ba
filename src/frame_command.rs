//! `roomlab frame`: what a server makes of each frame, one per line: the message as canonical JSON,
//! or the error code a roomlab server answers it with and why, in plain words. A frame is judged on
//! its own, as if it came after `hello` on a fresh connection: the checks that need no room state
//! (size, shape, protocol version, query limits, data that must be an object or is too large).

use anyhow::{Context, Result};
use roomlab_protocol::{ClientMessage, DecodeError, ErrorCode, Limits, Mutation, Target, PROTOCOL_VERSION};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::io::BufRead;

/// The options of `roomlab frame`.
#[derive(clap::Args)]
pub struct FrameArgs {
    /// Frame-size limit in bytes, as a server would enforce it (the protocol's default limit).
    #[arg(long, default_value_t = Limits::default().frame_bytes_max)]
    frame_bytes_max: usize,
    /// Decode as server-to-client frames instead of client-to-server frames.
    #[arg(long)]
    server: bool,
}

/// A frame's verdict: the canonical JSON of the message it is, or the code a server answers.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// The frame is a message the server accepts (as far as one frame alone can tell).
    Ok(String),
    /// The server refuses it with this code, for this reason.
    Refused(ErrorCode, String),
}

/// Runs `roomlab frame`; false when any line was refused.
pub fn run_frame(args: FrameArgs) -> Result<bool> {
    let mut all_ok = true;
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading standard input")?;
        if line.trim().is_empty() {
            continue;
        }
        let verdict = if args.server {
            judge_server(&line, args.frame_bytes_max)
        } else {
            judge(&line, args.frame_bytes_max)
        };
        match verdict {
            Verdict::Ok(json) => println!("ok\t{json}"),
            Verdict::Refused(code, why) => {
                all_ok = false;
                println!("{code}\t{why}");
            }
        }
    }
    Ok(all_ok)
}

/// What a server answers a client's frame with.
pub fn judge(line: &str, frame_bytes_max: usize) -> Verdict {
    let message = match roomlab_protocol::decode(line.as_bytes(), frame_bytes_max) {
        Ok(message) => message,
        Err(error) => return refused_frame::<ClientMessage>(line, &error),
    };
    if let Some((code, why)) = refusal(&message) {
        return Verdict::Refused(code, why);
    }
    Verdict::Ok(canonical(&message))
}

/// What a client makes of a server's frame.
pub fn judge_server(line: &str, frame_bytes_max: usize) -> Verdict {
    match roomlab_protocol::decode_server(line.as_bytes(), frame_bytes_max) {
        Ok(message) => Verdict::Ok(canonical(&message)),
        Err(error) => refused_frame::<roomlab_protocol::ServerMessage>(line, &error),
    }
}

/// The message as canonical JSON: the protocol's encoding with every object's keys sorted.
fn canonical(message: &impl serde::Serialize) -> String {
    serde_json::to_value(message).map(|value| value.to_string()).unwrap_or_default()
}

/// A frame the decoder refused, explained: too large, not JSON, or JSON that is no message.
fn refused_frame<T: DeserializeOwned>(line: &str, error: &DecodeError) -> Verdict {
    let why = match error {
        DecodeError::TooLarge { length, max } => {
            format!("the frame is {length} bytes, more than the limit of {max}; the server closes the connection with 1009")
        }
        DecodeError::Malformed(text) => match serde_json::from_str::<Value>(line) {
            Err(syntax) => format!("not JSON: {}", plain_json_error(&syntax)),
            Ok(_) => match serde_json::from_str::<T>(line) {
                Err(shape) => format!("not a message of the protocol: {}", plain_json_error(&shape)),
                Ok(_) => text.clone(),
            },
        },
        DecodeError::MalformedBinary(why) => why.to_string(),
    };
    Verdict::Refused(error.code(), why)
}

/// The refusals a server makes of a well-formed message before it looks at the room: the
/// protocol version (conn.hello.version), a query over the limits (query.refused, §20), and data
/// that must be an object or is larger than a document may be (§20).
fn refusal(message: &ClientMessage) -> Option<(ErrorCode, String)> {
    let limits = Limits::default();
    match message {
        ClientMessage::Hello { protocol, .. } if *protocol != PROTOCOL_VERSION => Some((
            ErrorCode::UnsupportedProtocol,
            format!("hello names protocol {protocol}, the server speaks {PROTOCOL_VERSION}; it closes the connection with 4002"),
        )),
        ClientMessage::Subscribe { target: Target::Query(query), .. } => query.check().err().map(|error| {
            (ErrorCode::Invalid, format!("the query is refused: {error} (docs/PROTOCOL.md query.refused)"))
        }),
        ClientMessage::Mutate {
            mutation: Mutation::Create { data, .. } | Mutation::Put { data, .. }, ..
        } => {
            if !data.is_object() {
                return Some((ErrorCode::Invalid, "data must be a JSON object".into()));
            }
            let bytes = data.to_string().len();
            (bytes > limits.doc_bytes_max).then(|| {
                (
                    ErrorCode::LimitExceeded,
                    format!("the data is {bytes} bytes, more than a document's limit of {}", limits.doc_bytes_max),
                )
            })
        }
        _ => None,
    }
}

/// A serde_json error in plain words, with the column where it happened: "expected a value at
/// column 2" rather than "expected ident at line 1 column 2". Syntax errors name what the text
/// lacks; data errors name the field or value at fault.
pub fn plain_json_error(error: &serde_json::Error) -> String {
    let full = error.to_string();
    // serde_json appends " at line L column C" to its message; the position is said again below.
    let message = match full.rfind(" at line ") {
        Some(cut) if error.line() > 0 => &full[..cut],
        _ => full.as_str(),
    };
    let words = match error.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => syntax_words(message),
        _ => data_words(message),
    };
    match (error.line(), error.column()) {
        (0, _) => words,
        (1, column) => format!("{words} at column {column}"),
        (line, column) => format!("{words} at line {line}, column {column}"),
    }
}

/// serde_json's syntax messages (its `ErrorCode` texts) in plain words.
fn syntax_words(message: &str) -> String {
    let words = match message {
        "EOF while parsing a list" => "the text ends inside a list (a ] is missing)",
        "EOF while parsing an object" => "the text ends inside an object (a } is missing)",
        "EOF while parsing a string" => "the text ends inside a string (a closing \" is missing)",
        "EOF while parsing a value" => "the text ends where a value should be",
        "expected `:`" => "expected a colon after the key",
        "expected `,` or `]`" => "expected a comma or ]",
        "expected `,` or `}`" => "expected a comma or }",
        "expected ident" | "expected value" => "expected a value",
        "invalid escape" => "an invalid escape (\\) in a string",
        "invalid number" => "an invalid number",
        "number out of range" => "a number out of range",
        "invalid unicode code point" => "an invalid unicode escape",
        "control character (\\u0000-\\u001F) found while parsing a string" => {
            "a control character inside a string (write it escaped, like \\n)"
        }
        "key must be a string" => "a key that is not a string in double quotes",
        "lone leading surrogate in hex escape" | "unexpected end of hex escape" => "an incomplete \\u escape",
        "trailing comma" => "a comma before the closing bracket",
        "trailing characters" => "more text after the end of the JSON value",
        "recursion limit exceeded" => "nested too deeply",
        other => other,
    };
    words.to_string()
}

/// serde's data messages in plain words: quotes instead of backticks, types named as JSON names
/// them.
fn data_words(message: &str) -> String {
    let mut words = message.replace('`', "\"");
    for (rust, json) in [
        ("expected u64", "expected a whole number of 0 or more"),
        ("expected u32", "expected a whole number of 0 or more"),
        ("expected usize", "expected a whole number of 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a borrowed string", "expected a string"),
        ("invalid type: map", "invalid type: an object"),
        ("invalid type: sequence", "invalid type: an array"),
        ("internally tagged enum ClientMessage", "a message with a \"type\""),
        ("internally tagged enum ServerMessage", "a message with a \"type\""),
    ] {
        words = words.replace(rust, json);
    }
    if let Some(rest) = words.strip_prefix("unknown variant ") {
        words = format!("unknown value {rest}");
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Judges `line` as a client frame (or a server frame with `server`) and compares the verdict's
    /// code and a fragment of its text.
    fn check(line: &str, server: bool, code: &str, fragment: &str) {
        let max = Limits::default().frame_bytes_max;
        let verdict = if server { judge_server(line, max) } else { judge(line, max) };
        let (got, text) = match &verdict {
            Verdict::Ok(json) => ("ok".to_string(), json.clone()),
            Verdict::Refused(code, why) => (code.to_string(), why.clone()),
        };
        assert_eq!(got, code, "{line}: {verdict:?}");
        assert!(text.contains(fragment), "{line}: {text:?} lacks {fragment:?}");
    }

    #[test]
    fn frames_get_the_servers_verdict_in_plain_words() {
        check(r#"{"type":"ping","nonce":1}"#, false, "ok", r#"{"nonce":1,"type":"ping"}"#);
        check(
            r#"{"sub":"q1","doc":"sys:trash","type":"subscribe"}"#,
            false,
            "ok",
            r#"{"doc":"sys:trash","sub":"q1","type":"subscribe"}"#,
        );
        check("nope", false, "bad_frame", "not JSON: expected a value at column 2");
        check(r#"{"type":"ping""#, false, "bad_frame", "not JSON: the text ends inside an object");
        check(r#"{"type":"ping","nonce":1}x"#, false, "bad_frame", "more text after the end");
        check(r#"{type:"ping"}"#, false, "bad_frame", "a key that is not a string");
        check(
            r#"{"type":"frob"}"#,
            false,
            "bad_frame",
            r#"not a message of the protocol: unknown value "frob""#,
        );
        check(r#"{"type":"ping"}"#, false, "bad_frame", r#"missing field "nonce""#);
        check(r#"{"type":"ping","nonce":"a"}"#, false, "bad_frame", "expected a whole number");
        check(
            r#"{"type":"hello","protocol":2,"client":"c"}"#,
            false,
            "unsupported_protocol",
            "closes the connection with 4002",
        );
        check(
            r#"{"type":"subscribe","sub":"q","query":{"collection":"tasks","limit":5000}}"#,
            false,
            "invalid",
            "limit must be between 1 and 1000",
        );
        check(
            r#"{"type":"subscribe","sub":"q","query":{"collection":"tasks","limit":10}}"#,
            false,
            "ok",
            r#""limit":10"#,
        );
        check(
            r#"{"type":"mutate","mid":1,"op":"put","doc":"d","data":[1]}"#,
            false,
            "invalid",
            "data must be a JSON object",
        );
        let huge = format!(
            r#"{{"type":"mutate","mid":1,"op":"put","doc":"d","data":{{"a":"{}"}}}}"#,
            "x".repeat(300_000)
        );
        check(&huge, false, "limit_exceeded", "more than a document's limit of 262144");
        let oversize = format!(r#"{{"type":"ping","nonce":1,"pad":"{}"}}"#, "x".repeat(1 << 20));
        check(&oversize, false, "frame_too_large", "closes the connection with 1009");
        check(r#"{"type":"pong","nonce":3}"#, true, "ok", r#"{"nonce":3,"type":"pong"}"#);
        check(r#"{"type":"ping","nonce":3}"#, true, "bad_frame", r#"unknown value "ping""#);
    }
}
