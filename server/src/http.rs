//! HTTP: routing, the WebSocket upgrades, asset downloads and listings, and the health check.

use crate::connection::{self, Endpoint};
use crate::rooms::Input;
use crate::token::{self, TokenError};
use crate::Server;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use roomlab_engine::Identity;
use roomlab_protocol::{
    BucketName, DocId, ErrorCode, FieldName, Mutation, ObjectKey, RoomId, ServerMessage, SubId, Target,
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
    AssetUpload(RoomId, BucketName),
    AssetDelete(RoomId, BucketName, ObjectKey),
}

fn route(method: &Method, path: &str) -> Option<Route> {
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    let room = |s: &str| RoomId::new(s).ok();
    let (get, post, delete) = (method == Method::GET, method == Method::POST, method == Method::DELETE);
    Some(match parts.as_slice() {
        ["v1", "rooms", r, "buckets", b, "assets"] if post => {
            Route::AssetUpload(room(r)?, BucketName::new(*b).ok()?)
        }
        ["v1", "rooms", r, "buckets", b, "assets", k] if delete => {
            Route::AssetDelete(room(r)?, BucketName::new(*b).ok()?, ObjectKey::new(*k).ok()?)
        }
        _ if !get => return None,
        ["v1", "health"] => Route::Health,
        ["ws", r] => Route::Socket(room(r)?),
        ["yjs", r, d, f] => Route::YjsSocket(room(r)?, DocId::new(*d).ok()?, FieldName::new(*f).ok()?),
        ["v1", "rooms", r, "buckets", b, "assets"] => Route::AssetList(room(r)?, BucketName::new(*b).ok()?),
        ["v1", "rooms", r, "buckets", b, "assets", k] => {
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

/// A room that cannot open: the cause can name the server's files, so it goes to the log only.
fn room_unavailable(room: &RoomId, e: &roomlab_engine::EngineError) -> Reply {
    tracing::warn!(room = %room, "room unavailable: {e}");
    text(StatusCode::INTERNAL_SERVER_ERROR, "room unavailable")
}

/// Answers one HTTP request.
pub(crate) async fn handle(
    server: Server,
    request: Request<Incoming>,
    peer: Option<std::net::SocketAddr>,
) -> Result<Reply, std::convert::Infallible> {
    let Some(route) = route(request.method(), request.uri().path()) else {
        return Ok(text(StatusCode::NOT_FOUND, "no such route for this method; see docs/PROTOCOL.md"));
    };
    let room = match &route {
        Route::Health => {
            let open = server.open_rooms().len();
            return Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "status": "ok", "protocol": roomlab_protocol::PROTOCOL_VERSION, "rooms_open": open }),
            ));
        }
        Route::Socket(room)
        | Route::YjsSocket(room, ..)
        | Route::AssetList(room, _)
        | Route::AssetDownload(room, ..)
        | Route::AssetUpload(room, _)
        | Route::AssetDelete(room, ..) => room.clone(),
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
        Route::Socket(room) => upgrade(server, request, (room, identity, peer), Endpoint::Protocol),
        Route::YjsSocket(room, doc, field) => {
            upgrade(server, request, (room, identity, peer), Endpoint::Yjs { doc, field })
        }
        Route::AssetList(room, bucket) => asset_list(&server, &room, &identity, bucket),
        Route::AssetDownload(room, bucket, key) => asset_download(&server, &room, &identity, &bucket, &key),
        Route::AssetUpload(room, bucket) => asset_upload(&server, room, identity, bucket, request).await,
        Route::AssetDelete(room, bucket, object_key) => {
            let mutation = Mutation::AssetDelete { bucket, object_key };
            detached(&server, (room, identity), mutation, StatusCode::OK, None).await
        }
        Route::Health => unreachable!("answered above"),
    })
}

/// `POST .../assets?name=N`: the body is the file, its `Content-Type` the asset's (assets.upload).
async fn asset_upload(
    server: &Server,
    room: RoomId,
    identity: Identity,
    bucket: BucketName,
    request: Request<Incoming>,
) -> Reply {
    let Some(name) = query_param(&request, "name").filter(|n| !n.is_empty()) else {
        return text(StatusCode::BAD_REQUEST, "the file name goes in ?name=");
    };
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let limit = server.config().engine.limits.asset_bytes_max;
    let body = match Limited::new(request.into_body(), limit).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, format!("files are at most {limit} bytes")),
    };
    let data_b64 = base64::engine::general_purpose::STANDARD.encode(&body);
    let mutation = Mutation::AssetUpload { bucket, name, content_type, data_b64 };
    detached(server, (room, identity), mutation, StatusCode::CREATED, Some(body.len())).await
}

/// Runs an HTTP mutation through the room's single writer and answers it.
/// `ok` is the status of an ack; `size`, when given, goes into its body (an upload's bytes).
async fn detached(
    server: &Server,
    (room, identity): (RoomId, Identity),
    mutation: Mutation,
    ok: StatusCode,
    size: Option<usize>,
) -> Reply {
    let inputs = match server.room(&room) {
        Ok((inputs, _)) => inputs,
        Err(e) => return room_unavailable(&room, &e),
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let input = Input::Detached { conn: server.next_conn(), identity, mutation, reply };
    if inputs.send(input).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "the room is closing; try again");
    }
    match answer.await {
        Ok(ServerMessage::Ack { seq, object_key, .. }) => {
            let mut body = serde_json::json!({ "seq": seq });
            if let Some(key) = object_key {
                body["object_key"] = serde_json::json!(key);
            }
            if let Some(size) = size {
                body["size"] = serde_json::json!(size);
            }
            json(ok, &body)
        }
        Ok(ServerMessage::Error(body)) if body.code == ErrorCode::LimitExceeded => {
            text(StatusCode::PAYLOAD_TOO_LARGE, body.message)
        }
        Ok(ServerMessage::Error(body)) => text(status_of(body.code), body.message),
        Ok(other) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}")),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "the room closed before answering"),
    }
}

fn unauthorized(error: &TokenError) -> Reply {
    text(StatusCode::UNAUTHORIZED, format!("unauthorized: {error}"))
}

fn asset_list(server: &Server, room: &RoomId, identity: &Identity, bucket: BucketName) -> Reply {
    let shared = match server.room(room) {
        Ok((_, shared)) => shared,
        Err(e) => return room_unavailable(room, &e),
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
        Err(e) => return room_unavailable(room, &e),
    };
    let found = shared.lock().expect("room lock").asset(identity, bucket, key);
    match found {
        Ok((content_type, bytes)) => {
            let mut response = Response::new(Full::new(Bytes::from(bytes)));
            let value = HeaderValue::from_str(&content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, value);
            // An uploaded file is the uploader's content, not the server's page: browsers must
            // neither sniff it into something executable nor render it on the server's origin.
            headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
            headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
            response
        }
        Err(body) => text(status_of(body.code), body.message),
    }
}

fn upgrade(
    server: Server,
    request: Request<Incoming>,
    (room, identity, peer): (RoomId, Identity, Option<std::net::SocketAddr>),
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
        .read_buffer_size(server.config().read_buffer_bytes)
        .max_message_size(Some(limits.frame_bytes_max))
        .max_frame_size(Some(limits.frame_bytes_max));
    let spawner = server.clone();
    spawner.spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(request).await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), WsRole::Server, Some(config)).await;
        connection::run(server, ws, (room, identity, peer), endpoint).await;
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
            assert_eq!(route(&Method::GET, path).map(|r| format!("{r:?}")).as_deref(), expected, "{path}");
        };
        check("/v1/health", Some("Health"));
        check("/ws/canvas-9", Some("Socket(RoomId(\"canvas-9\"))"));
        check("/ws/a%2Fb", Some("Socket(RoomId(\"a/b\"))"));
        check("/yjs/r/t1/body", Some("YjsSocket(RoomId(\"r\"), DocId(\"t1\"), FieldName(\"body\"))"));
        check(
            "/v1/rooms/r/buckets/gallery/assets",
            Some("AssetList(RoomId(\"r\"), BucketName(\"gallery\"))"),
        );
        check(
            "/v1/rooms/r/buckets/gallery/assets/a4",
            Some("AssetDownload(RoomId(\"r\"), BucketName(\"gallery\"), ObjectKey(\"a4\"))"),
        );
        check("/ws/", None);
        check("/ws/a%20b", None);
        check("/nope", None);
        let post = route(&Method::POST, "/v1/rooms/r/buckets/g/assets").map(|r| format!("{r:?}"));
        assert_eq!(post.as_deref(), Some("AssetUpload(RoomId(\"r\"), BucketName(\"g\"))"));
        let delete = route(&Method::DELETE, "/v1/rooms/r/buckets/g/assets/a4").map(|r| format!("{r:?}"));
        assert_eq!(
            delete.as_deref(),
            Some("AssetDelete(RoomId(\"r\"), BucketName(\"g\"), ObjectKey(\"a4\"))")
        );
        assert_eq!(route(&Method::POST, "/v1/health"), None);
    }
}
