//! The WebSocket close codes a roomlab server sends (docs/PROTOCOL.md, the close-code table).

use std::fmt;

/// A close code a server sends, each with the rule that calls for it. A peer may receive codes
/// outside this set (1005 for a close frame without a status, 1006 for a dropped stream), so
/// receivers keep the number and compare it with [`CloseCode::number`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CloseCode {
    /// 1000: the connection ended with nothing wrong.
    Normal,
    /// 1001: the server or the room is going away (conn.shutdown, an idle room closing).
    GoingAway,
    /// 1007: a text frame that is not UTF-8 (conn.invalid-text).
    InvalidText,
    /// 1008: no `hello` within the server's deadline (conn.hello.deadline).
    PolicyViolation,
    /// 1009: a frame over `frame_bytes_max` (conn.oversize.closes).
    TooLarge,
    /// 1011: the room failed (a storage error, a failed group commit).
    InternalError,
    /// 1013: the server holds as many connections as it may.
    TryAgainLater,
    /// 4001: the token is missing, forged, expired or for another room.
    Unauthorized,
    /// 4002: the `hello` names another protocol version.
    UnsupportedProtocol,
    /// 4008: the connection read its frames too slowly (conn.slow-consumer).
    SlowConsumer,
}

impl CloseCode {
    /// Every close code, in numeric order.
    pub const ALL: [CloseCode; 10] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::InvalidText,
        CloseCode::PolicyViolation,
        CloseCode::TooLarge,
        CloseCode::InternalError,
        CloseCode::TryAgainLater,
        CloseCode::Unauthorized,
        CloseCode::UnsupportedProtocol,
        CloseCode::SlowConsumer,
    ];

    /// The code's number on the wire.
    pub fn number(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::InvalidText => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::TooLarge => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::TryAgainLater => 1013,
            CloseCode::Unauthorized => 4001,
            CloseCode::UnsupportedProtocol => 4002,
            CloseCode::SlowConsumer => 4008,
        }
    }

    /// The code with this number, if the protocol names it.
    pub fn from_number(number: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|code| code.number() == number)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.number()
    }
}

#[cfg(test)]
mod tests {
    use super::CloseCode;

    /// Each code's number is the one docs/PROTOCOL.md gives, and numbers map back to their codes.
    #[test]
    fn numbers_round_trip_and_match_the_spec() {
        let spec = include_str!("../../docs/PROTOCOL.md");
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_number(code.number()), Some(code));
            if code != CloseCode::Normal {
                assert!(spec.contains(&format!("| {} |", code.number())), "{code:?} is not in the table");
            }
        }
        assert!(CloseCode::ALL.windows(2).all(|pair| pair[0].number() < pair[1].number()));
        assert_eq!(CloseCode::from_number(1005), None);
    }
}
