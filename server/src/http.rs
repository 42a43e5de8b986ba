//! HTTP: routing, the WebSocket upgrades, asset downloads and listings, and the health check.

use crate::connection::{self, Endpoint};
use crate::token::{self, TokenError};
use crate::Server;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use roomlab_engine::Identity;
use roomlab_protocol::{
    BucketName, DocId, ErrorCode, FieldName, ObjectKey, RoomId, ServerMessage, SubId, Target,
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role as WsRole, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// An HTTP response with a complete body.
pub(crate) type Reply = Response<Full<Bytes>>;

/// The routes, parsed from a request's path.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Health,
    Socket(RoomId),
    YjsSocket(RoomId, DocId, FieldName),
    AssetList(RoomId, BucketName),
    AssetDownload(RoomId, BucketName, ObjectKey),
}

fn route(path: &str) -> Option<Route> {
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    let room = |s: &str| RoomId::new(s).ok();
    Some(match parts.as_slice() {
        ["v1", "health"] => Route::Health,
        ["ws", r] => Route::Socket(room(r)?),
        ["yjs", r, d, f] => Route::YjsSocket(room(r)?, DocId::new(*d).ok()?, FieldName::new(*f).ok()?),
        ["v1", "rooms", r, "assets", b] => Route::AssetList(room(r)?, BucketName::new(*b).ok()?),
        ["v1", "rooms", r, "assets", b, k] => {
            Route::AssetDownload(room(r)?, BucketName::new(*b).ok()?, ObjectKey::new(*k).ok()?)
        }
        _ => return None,
    })
}

fn query_param(request: &Request<Incoming>, name: &str) -> Option<String> {
    let query = request.uri().query()?;
    form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

/// The bearer token: `Authorization: Bearer` for HTTP clients, `?token=` where browsers cannot set headers.
fn token(request: &Request<Incoming>) -> Option<String> {
    let header = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match header.and_then(|h| h.strip_prefix("Bearer ")) {
        Some(bearer) => Some(bearer.to_string()),
        None => query_param(request, "token"),
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn json(status: StatusCode, body: &serde_json::Value) -> Reply {
    let mut response = text(status, body.to_string());
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Forbidden | ErrorCode::StorageDisabled => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Incompatible => StatusCode::CONFLICT,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Answers one HTTP request.
pub(crate) async fn handle(
    server: Server,
    request: Request<Incoming>,
) -> Result<Reply, std::convert::Infallible> {
    let Some(route) = route(request.uri().path()) else {
        return Ok(text(StatusCode::NOT_FOUND, "no such route; see docs/PROTOCOL.md"));
    };
    if request.method() != Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served"));
    }
    let room = match &route {
        Route::Health => {
            let open = server.open_rooms().len();
            return Ok(json(StatusCode::OK, &serde_json::json!({ "status": "ok", "rooms_open": open })));
        }
        Route::Socket(room)
        | Route::YjsSocket(room, ..)
        | Route::AssetList(room, _)
        | Route::AssetDownload(room, ..) => room.clone(),
    };
    let identity = match token::verify(
        &server.config().secret,
        token(&request).as_deref(),
        &room,
        server.clock().now_s(),
    ) {
        Ok(identity) => identity,
        Err(e) => return Ok(unauthorized(&e)),
    };
    Ok(match route {
        Route::Socket(room) => upgrade(server, request, room, identity, Endpoint::Protocol),
        Route::YjsSocket(room, doc, field) => {
            upgrade(server, request, room, identity, Endpoint::Yjs { doc, field })
        }
        Route::AssetList(room, bucket) => asset_list(&server, &room, &identity, bucket),
        Route::AssetDownload(room, bucket, key) => asset_download(&server, &room, &identity, &bucket, &key),
        Route::Health => unreachable!("answered above"),
    })
}

fn unauthorized(error: &TokenError) -> Reply {
    text(StatusCode::UNAUTHORIZED, format!("unauthorized: {error}"))
}

fn asset_list(server: &Server, room: &RoomId, identity: &Identity, bucket: BucketName) -> Reply {
    let shared = match server.room(room) {
        Ok((_, shared)) => shared,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("room unavailable: {e}")),
    };
    let sub = SubId::new("http").expect("valid sub id");
    let answer = shared.lock().expect("room lock").answer(identity, &sub, &Target::Assets(bucket));
    match answer {
        ServerMessage::AssetsList { assets, .. } => {
            json(StatusCode::OK, &serde_json::json!({ "assets": assets }))
        }
        ServerMessage::Error(body) => text(status_of(body.code), body.message),
        other => text(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}")),
    }
}

fn asset_download(
    server: &Server,
    room: &RoomId,
    identity: &Identity,
    bucket: &BucketName,
    key: &ObjectKey,
) -> Reply {
    let shared = match server.room(room) {
        Ok((_, shared)) => shared,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("room unavailable: {e}")),
    };
    let found = shared.lock().expect("room lock").asset(identity, bucket, key);
    match found {
        Ok((content_type, bytes)) => {
            let mut response = Response::new(Full::new(Bytes::from(bytes)));
            let value = HeaderValue::from_str(&content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            response.headers_mut().insert(header::CONTENT_TYPE, value);
            response
        }
        Err(body) => text(status_of(body.code), body.message),
    }
}

fn upgrade(
    server: Server,
    request: Request<Incoming>,
    room: RoomId,
    identity: Identity,
    endpoint: Endpoint,
) -> Reply {
    let upgrade_asked = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY).filter(|_| upgrade_asked) else {
        return text(StatusCode::BAD_REQUEST, "this endpoint speaks WebSocket only");
    };
    let accept = derive_accept_key(key.as_bytes());
    let limits = &server.config().engine.limits;
    let config = WebSocketConfig::default()
        // tungstenite zero-fills its whole read buffer on every read; 128 KiB by default made
        // that fill most of the CPU time of a room with many small frames.
        .read_buffer_size(8 * 1024)
        .max_message_size(Some(limits.frame_bytes_max))
        .max_frame_size(Some(limits.frame_bytes_max));
    let spawner = server.clone();
    spawner.spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(request).await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), WsRole::Server, Some(config)).await;
        connection::run(server, ws, room, identity, endpoint).await;
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_endpoints() {
        let check = |path: &str, expected: Option<&str>| {
            assert_eq!(route(path).map(|r| format!("{r:?}")).as_deref(), expected, "{path}");
        };
        check("/v1/health", Some("Health"));
        check("/ws/canvas-9", Some("Socket(RoomId(\"canvas-9\"))"));
        check("/ws/a%2Fb", Some("Socket(RoomId(\"a/b\"))"));
        check("/yjs/r/t1/body", Some("YjsSocket(RoomId(\"r\"), DocId(\"t1\"), FieldName(\"body\"))"));
        check("/v1/rooms/r/assets/gallery", Some("AssetList(RoomId(\"r\"), BucketName(\"gallery\"))"));
        check(
            "/v1/rooms/r/assets/gallery/a4",
            Some("AssetDownload(RoomId(\"r\"), BucketName(\"gallery\"), ObjectKey(\"a4\"))"),
        );
        check("/ws/", None);
        check("/ws/a%20b", None);
        check("/nope", None);
    }
}
