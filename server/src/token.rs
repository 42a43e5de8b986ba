//! Room tokens: HS256 JWTs whose claims name the user, the room, the role and the expiry
//! (docs/PROTOCOL.md conn.token.required).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use roomlab_engine::Identity;
use roomlab_protocol::{Plan, Role, RoomId, UserId};
use serde::{Deserialize, Serialize};

/// The claims of a room token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The room the token opens.
    pub room: String,
    /// The role the token grants.
    pub role: Role,
    /// Expiry, in Unix seconds.
    pub exp: u64,
    /// The storage plan (pro when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// Storage add-ons (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addons: Option<u32>,
}

/// Why a token was refused; the text is the close reason the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was given.
    #[error("token missing")]
    Missing,
    /// The token is not a JWT signed with this server's secret.
    #[error("token forged or malformed: {0}")]
    Invalid(String),
    /// The token's `exp` has passed.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// The token's expiry in Unix seconds.
        exp: u64,
        /// The server's time in Unix seconds.
        now: u64,
    },
    /// The token opens another room.
    #[error("token is for room {token_room}, not {room}")]
    WrongRoom {
        /// The room in the token.
        token_room: String,
        /// The room asked for.
        room: String,
    },
    /// The token's `nbf` (not before) is still in the future.
    #[error("token not valid before {nbf} (now {now})")]
    NotYetValid {
        /// The token's `nbf` in Unix seconds.
        nbf: u64,
        /// The server's time in Unix seconds.
        now: u64,
    },
    /// A claim is not a valid identifier.
    #[error("token claim {0} is not a valid identifier")]
    BadClaim(&'static str),
}

/// The claims with the registered time claims a verifier honours but roomlab never mints.
#[derive(Deserialize)]
struct WithTimes {
    #[serde(flatten)]
    claims: Claims,
    /// Not before, in Unix seconds (RFC 7519 4.1.5).
    #[serde(default)]
    nbf: Option<u64>,
}

/// Signs `claims` with `secret`.
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
        .expect("HS256 signing of plain claims cannot fail")
}

/// Checks a token for `room` at `now_s` (Unix seconds, from the host's clock) and returns who it
/// names. Expiry is checked here against the host's clock, never against the system's, so that a
/// simulated server judges tokens by simulated time.
pub fn verify(secret: &[u8], token: Option<&str>, room: &RoomId, now_s: u64) -> Result<Identity, TokenError> {
    let token = token.filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
    let mut validation = Validation::new(Algorithm::HS256);
    // Both time claims are checked below against the host's clock, not the system's.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
    let decoded = jsonwebtoken::decode::<WithTimes>(token, &DecodingKey::from_secret(secret), &validation)
        .map_err(|e| TokenError::Invalid(e.to_string()))?
        .claims;
    let claims = decoded.claims;
    if let Some(nbf) = decoded.nbf.filter(|nbf| *nbf > now_s) {
        return Err(TokenError::NotYetValid { nbf, now: now_s });
    }
    if claims.exp <= now_s {
        return Err(TokenError::Expired { exp: claims.exp, now: now_s });
    }
    if claims.room != room.as_str() {
        return Err(TokenError::WrongRoom { token_room: claims.room, room: room.to_string() });
    }
    let user = UserId::new(claims.sub).map_err(|_| TokenError::BadClaim("sub"))?;
    let mut identity = Identity::new(user, claims.role);
    identity.plan = claims.plan.unwrap_or(Plan::Pro);
    identity.addons = claims.addons.unwrap_or(0);
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(room: &str, exp: u64) -> Claims {
        Claims { sub: "u1".into(), room: room.into(), role: Role::Member, exp, plan: None, addons: Some(2) }
    }

    fn check(token: Option<&str>, room: &str, now_s: u64) -> Result<(String, Role, u32), TokenError> {
        let room = RoomId::new(room).unwrap();
        verify(b"secret", token, &room, now_s).map(|i| (i.user.to_string(), i.role, i.addons))
    }

    #[test]
    fn tokens_are_checked_against_secret_room_and_host_clock() {
        let good = mint(b"secret", &claims("r1", 100));
        let forged = mint(b"other", &claims("r1", 100));
        assert_eq!(check(Some(&good), "r1", 99), Ok(("u1".into(), Role::Member, 2)));
        assert_eq!(check(Some(&good), "r1", 100), Err(TokenError::Expired { exp: 100, now: 100 }));
        assert!(matches!(check(Some(&good), "r2", 99), Err(TokenError::WrongRoom { .. })));
        assert!(matches!(check(Some(&forged), "r1", 99), Err(TokenError::Invalid(_))));
        assert!(matches!(check(Some("not.a.jwt"), "r1", 99), Err(TokenError::Invalid(_))));
        assert_eq!(check(None, "r1", 99), Err(TokenError::Missing));
        assert_eq!(check(Some(""), "r1", 99), Err(TokenError::Missing));
        // A future `nbf` (which roomlab never mints, but other issuers do) is honoured.
        let with_nbf = |nbf: u64| {
            let mut claims = serde_json::to_value(claims("r1", 100)).unwrap();
            claims["nbf"] = nbf.into();
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(b"secret"),
            )
            .unwrap()
        };
        assert_eq!(check(Some(&with_nbf(50)), "r1", 49), Err(TokenError::NotYetValid { nbf: 50, now: 49 }));
        assert_eq!(check(Some(&with_nbf(50)), "r1", 50), Ok(("u1".into(), Role::Member, 2)));
    }
}
