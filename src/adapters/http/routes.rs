//! The route table and the JSON endpoints of the HTTP API
//! (`docs/protocol.md`).
//!
//! [`handle`] is the whole life of an ordinary request on a worker thread:
//! limits, route, method, handler, answer. A stream request leaves here
//! for its own thread ([`super::sse`]).

use serde::Deserialize;
use serde_json::{json, Value};
use tiny_http::{Method, Request};
use uuid::Uuid;

use super::assets::{self, Asset};
use super::request::{
    check_limits, parse_json, percent_decode, query_param, read_json, session_token, split_url, JsonBody,
};
use super::response::{send, Answer, Handled, Refusal};
use super::{sse, ws, HttpContext};
use crate::command::{parse_input, Input};
use crate::error::ChatError;
use crate::event::{rfc3339, Protocol, SessionId};
use crate::names::normalize_room;
use crate::router::{Reply, RouterMsg, SessionRef};

/// Everything the server answers, by path.
enum Endpoint {
    Page(&'static Asset),
    Connect,
    Disconnect,
    Command,
    Message,
    /// `GET /api/messages/:room`, the SSE stream.
    Stream(String),
    /// `GET /api/ws`, the WebSocket.
    WebSocket,
    Rooms,
    Members(String),
    History(String),
    Health,
    Metrics,
    OpenApi,
}

/// Which methods a route takes.
#[derive(Clone, Copy)]
enum Verbs {
    /// GET, and HEAD (tiny_http leaves the body out).
    Read,
    /// POST with a JSON body.
    Write,
    /// GET only: a HEAD cannot hold a stream open.
    Stream,
}

impl Verbs {
    fn allows(self, method: &Method) -> bool {
        match self {
            Verbs::Read => matches!(method, Method::Get | Method::Head),
            Verbs::Write => *method == Method::Post,
            Verbs::Stream => *method == Method::Get,
        }
    }

    /// The `Allow` header.
    fn allow(self) -> &'static str {
        match self {
            Verbs::Read => "GET, HEAD, OPTIONS",
            Verbs::Write => "POST, OPTIONS",
            Verbs::Stream => "GET, OPTIONS",
        }
    }
}

/// One API route: a path template (`{room}` stands for one segment, given
/// to `endpoint` decoded), the methods it takes, and its endpoint.
struct Route {
    path: &'static str,
    verbs: Verbs,
    endpoint: fn(Vec<String>) -> Endpoint,
}

/// The route table of the API (the page's files are in [`assets::FILES`]).
/// `GET /api/openapi.json` describes every route; a test keeps the two in step.
const ROUTES: &[Route] = &[
    Route { path: "/api/connect", verbs: Verbs::Write, endpoint: |_| Endpoint::Connect },
    Route { path: "/api/disconnect", verbs: Verbs::Write, endpoint: |_| Endpoint::Disconnect },
    Route { path: "/api/command", verbs: Verbs::Write, endpoint: |_| Endpoint::Command },
    Route { path: "/api/message", verbs: Verbs::Write, endpoint: |_| Endpoint::Message },
    Route { path: "/api/messages/{room}", verbs: Verbs::Stream, endpoint: |mut p| Endpoint::Stream(p.remove(0)) },
    Route { path: "/api/ws", verbs: Verbs::Stream, endpoint: |_| Endpoint::WebSocket },
    Route { path: "/api/rooms", verbs: Verbs::Read, endpoint: |_| Endpoint::Rooms },
    Route { path: "/api/rooms/{room}/members", verbs: Verbs::Read, endpoint: |mut p| Endpoint::Members(p.remove(0)) },
    Route { path: "/api/rooms/{room}/history", verbs: Verbs::Read, endpoint: |mut p| Endpoint::History(p.remove(0)) },
    Route { path: "/api/health", verbs: Verbs::Read, endpoint: |_| Endpoint::Health },
    Route { path: "/api/openapi.json", verbs: Verbs::Read, endpoint: |_| Endpoint::OpenApi },
    Route { path: "/metrics", verbs: Verbs::Read, endpoint: |_| Endpoint::Metrics },
];

/// Every route the server answers, page files included, with the methods
/// each takes (as in its `Allow` header), for the OpenAPI document's test.
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    let files = assets::FILES.iter().map(|(path, _)| (*path, Verbs::Read.allow()));
    files.chain(ROUTES.iter().map(|r| (r.path, r.verbs.allow()))).collect()
}

/// Finds the endpoint of `path`.
fn resolve(path: &str) -> Option<(Endpoint, Verbs)> {
    if let Some(asset) = assets::find(path) {
        return Some((Endpoint::Page(asset), Verbs::Read));
    }
    let segments: Vec<String> = path.strip_prefix('/')?.split('/').map(|s| percent_decode(s, false)).collect();
    ROUTES.iter().find_map(|route| {
        let template: Vec<&str> = route.path[1..].split('/').collect();
        if template.len() != segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (want, got) in template.iter().zip(&segments) {
            if want.starts_with('{') {
                params.push(got.clone());
            } else if want != got {
                return None;
            }
        }
        Some(((route.endpoint)(params), route.verbs))
    })
}

/// The OpenAPI 3 description of every route.
const OPENAPI: &str = include_str!("openapi.json");

/// What became of a request.
enum Routed {
    Answer(Answer),
    Stream(String),
    WebSocket,
}

/// Answers one request (on a worker thread).
pub fn handle(mut request: Request, ctx: &HttpContext) {
    match route(&mut request, ctx) {
        Ok(Routed::Answer(answer)) => send(request, answer, ctx),
        Ok(Routed::Stream(room)) => sse::open(request, room, ctx),
        Ok(Routed::WebSocket) => ws::open(request, ctx),
        Err(refusal) => send(request, refusal.into(), ctx),
    }
}

fn route(request: &mut Request, ctx: &HttpContext) -> Result<Routed, Refusal> {
    check_limits(request, ctx.limits.max_header_bytes, ctx.limits.max_body_bytes)?;
    let url = request.url().to_string();
    let (path, query) = split_url(&url);
    let method = request.method().clone();
    let Some((endpoint, verbs)) = resolve(path) else {
        return Err(Refusal::new(404, format!("no such endpoint: {method} {path}")));
    };
    if method == Method::Options {
        return Ok(Routed::Answer(
            Answer { status: 204, ..Answer::bytes("text/plain", Vec::new()) }
                .with_header("Allow", verbs.allow())
                .with_header("Access-Control-Allow-Methods", verbs.allow())
                .with_header("Access-Control-Allow-Headers", "Content-Type, Last-Event-ID"),
        ));
    }
    if !verbs.allows(&method) {
        let usable = verbs.allow().trim_end_matches(", OPTIONS");
        let mut refusal = Refusal::new(405, format!("method {method} is not allowed on {path}; use {usable}."));
        refusal.allow = Some(verbs.allow());
        return Err(refusal);
    }
    let max = ctx.limits.max_body_bytes;
    let answer = match endpoint {
        Endpoint::Page(asset) => Answer::bytes(asset.content_type, asset.body.to_vec()),
        Endpoint::Connect => connect(read_json(request, max)?, ctx)?,
        Endpoint::Disconnect => disconnect(read_json(request, max)?, ctx)?,
        Endpoint::Command => command(read_json(request, max)?, ctx)?,
        Endpoint::Message => message(read_json(request, max)?, ctx)?,
        Endpoint::Stream(room) => return Ok(Routed::Stream(room)),
        Endpoint::WebSocket => return Ok(Routed::WebSocket),
        Endpoint::Rooms => rooms(ctx)?,
        Endpoint::Members(room) => members(&room, ctx)?,
        Endpoint::History(room) => history(&room, query, ctx)?,
        Endpoint::Health => health(ctx),
        Endpoint::Metrics => metrics(ctx),
        Endpoint::OpenApi => Answer::bytes("application/json; charset=utf-8", OPENAPI.as_bytes().to_vec()),
    };
    Ok(Routed::Answer(answer))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConnectBody {
    nickname: String,
}

impl JsonBody for ConnectBody {
    const FIELDS: &'static [(&'static str, bool)] = &[("nickname", true)];
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionBody {
    session_id: String,
}

impl JsonBody for SessionBody {
    const FIELDS: &'static [(&'static str, bool)] = &[("sessionId", true)];
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommandBody {
    session_id: String,
    command: String,
}

impl JsonBody for CommandBody {
    const FIELDS: &'static [(&'static str, bool)] = &[("sessionId", true), ("command", true)];
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageBody {
    session_id: String,
    content: String,
    /// If given, must be the session's current room.
    room: Option<String>,
    /// The client's own id for the message (a UUID): a retry with the same
    /// id is answered with the first message and posts nothing new.
    client_msg_id: Option<String>,
}

impl JsonBody for MessageBody {
    const FIELDS: &'static [(&'static str, bool)] =
        &[("sessionId", true), ("content", true), ("room", false), ("clientMsgId", false)];
}

/// A `clientMsgId`: a UUID.
pub(super) fn client_msg_id(text: Option<&str>) -> Result<Option<Uuid>, String> {
    text.map(|t| Uuid::parse_str(t.trim()).map_err(|_| "clientMsgId must be a UUID.".to_string())).transpose()
}

/// The JSON bodies the API accepts, by endpoint, for the fuzz targets.
pub(super) const BODIES: &[&str] = &["/api/connect", "/api/disconnect", "/api/command", "/api/message"];

/// Decodes `body` as the JSON body of `BODIES[endpoint]`, through the same
/// checks as a request, then the same first steps its handler takes on the
/// fields (the session token, the command parser, the room name).
pub(super) fn decode_body(endpoint: usize, body: &[u8]) -> Result<(), Refusal> {
    match BODIES.get(endpoint).copied() {
        Some("/api/connect") => {
            let body: ConnectBody = parse_json(body)?;
            crate::names::validate_nickname(body.nickname.trim())?;
        }
        Some("/api/disconnect") => {
            session_token(&parse_json::<SessionBody>(body)?.session_id)?;
        }
        Some("/api/command") => {
            let body: CommandBody = parse_json(body)?;
            session_token(&body.session_id)?;
            parse_input(&body.command)?;
        }
        Some("/api/message") => {
            let body: MessageBody = parse_json(body)?;
            session_token(&body.session_id)?;
            if let Some(room) = &body.room {
                normalize_room(room)?;
            }
            crate::names::clean_message(&body.content, 2000)?;
        }
        _ => return Err(Refusal::new(404, "no such endpoint")),
    }
    Ok(())
}

/// `POST /api/connect {"nickname"}`: a new session, named under the same
/// rules as a TCP user's nickname.
fn connect(body: ConnectBody, ctx: &HttpContext) -> Handled {
    let token = Uuid::new_v4();
    let session = SessionRef::Token(token);
    ctx.router.send(RouterMsg::Open {
        session: SessionId::next(),
        protocol: Protocol::Http,
        token: Some(token),
        sink: None,
    });
    let nickname = body.nickname.trim().to_string();
    match ctx.router.call(|reply| RouterMsg::Login { session, nickname, reply }) {
        Ok(Reply::LoggedIn { user_id, nickname, .. }) => {
            Ok(Answer::data(json!({ "sessionId": token.to_string(), "userId": user_id, "nickname": nickname })))
        }
        outcome => {
            ctx.router.send(RouterMsg::Close { session });
            Err(match outcome {
                Err(ChatError::UnknownSession) => ChatError::ShuttingDown.into(),
                Err(e) => e.into(),
                Ok(_) => Refusal::new(500, "unexpected answer from the router."),
            })
        }
    }
}

/// `POST /api/disconnect {"sessionId"}`: ends the session as a TCP client
/// leaving would (its room sees "… disconnected", its nickname is free).
fn disconnect(body: SessionBody, ctx: &HttpContext) -> Handled {
    let token = session_token(&body.session_id)?;
    if ctx.router.session(token)?.is_none() {
        return Err(ChatError::UnknownSession.into());
    }
    ctx.router.send(RouterMsg::Close { session: SessionRef::Token(token) });
    Ok(Answer::success())
}

/// `POST /api/command {"sessionId","command"}`: any slash command; the
/// answer is the text a TCP user would see.
fn command(body: CommandBody, ctx: &HttpContext) -> Handled {
    let token = session_token(&body.session_id)?;
    let command = match parse_input(&body.command)? {
        Input::Command(command) => command,
        Input::Message(_) => {
            return Err(Refusal::bad("commands start with /; send chat messages with POST /api/message."))
        }
    };
    let session = SessionRef::Token(token);
    let text = match ctx.router.call(|reply| RouterMsg::Command { session, command, reply })? {
        Reply::Text(text) | Reply::Shown(text) => text,
        _ => String::new(),
    };
    Ok(Answer::json(200, &json!({ "success": true, "message": text })))
}

/// `POST /api/message {"sessionId","content","room"?}`: answered once the
/// message is committed (a 200 means it is stored).
fn message(body: MessageBody, ctx: &HttpContext) -> Handled {
    let token = session_token(&body.session_id)?;
    let client_msg_id = client_msg_id(body.client_msg_id.as_deref()).map_err(Refusal::bad)?;
    let (session, text, room) = (SessionRef::Token(token), body.content, body.room);
    match ctx.router.call(|reply| RouterMsg::Say { session, text, room, client_msg_id, reply })? {
        Reply::Sent { id, room, created_at_ms } => {
            Ok(Answer::data(json!({ "id": id, "room": room, "createdAt": rfc3339(created_at_ms) })))
        }
        _ => Err(Refusal::new(500, "unexpected answer from the router.")),
    }
}

/// `GET /api/rooms`
fn rooms(ctx: &HttpContext) -> Handled {
    let rooms: Vec<Value> = ctx
        .router
        .rooms()?
        .into_iter()
        .map(|r| json!({ "name": r.name, "memberCount": r.members, "createdAt": rfc3339(r.created_at_ms) }))
        .collect();
    Ok(Answer::data(json!({ "rooms": rooms })))
}

/// `GET /api/rooms/:room/members`: the nicknames in a room, sorted.
fn members(room: &str, ctx: &HttpContext) -> Handled {
    let name = normalize_room(room)?;
    let members = ctx.router.members(&name)?.ok_or(ChatError::NoSuchRoom(name.clone()))?;
    Ok(Answer::data(json!({ "room": name, "members": members })))
}

/// Most messages one history page may ask for, and the default.
const HISTORY_MAX: usize = 100;
const HISTORY_DEFAULT: usize = 50;

/// `GET /api/rooms/:room/history?before=<id>&limit=<n>`: older messages
/// from the store, oldest first.
fn history(room: &str, query: &str, ctx: &HttpContext) -> Handled {
    let param = |name| query_param(query, name).filter(|v| !v.is_empty());
    let before = match param("before") {
        None => None,
        Some(v) => Some(
            v.parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| Refusal::bad("'before' must be a message id (a positive whole number)."))?,
        ),
    };
    let limit = match param("limit") {
        None => HISTORY_DEFAULT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=HISTORY_MAX).contains(n))
            .ok_or_else(|| Refusal::bad(format!("'limit' must be a whole number from 1 to {HISTORY_MAX}.")))?,
    };
    let name = normalize_room(room)?;
    let room_id = ctx.router.room(&name)?.ok_or(ChatError::NoSuchRoom(name))?.id;
    let messages = ctx.store.query(move |store| store.messages_before(room_id, before, limit)).map_err(|e| {
        log::warn!("history of room {room_id} unavailable: {e}");
        Refusal::new(503, "the message store is unavailable, so history cannot be shown. Try again shortly.")
    })?;
    let messages: Vec<Value> = messages
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "roomId": m.room_id,
                "userId": m.user_id,
                "content": m.content,
                "createdAt": rfc3339(m.created_at_ms),
                "nickname": m.nickname,
            })
        })
        .collect();
    Ok(Answer::data(json!({ "messages": messages })))
}

/// How long `/api/health` waits for the router before calling it unhealthy.
const ROUTER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /api/health`: 503 `unhealthy` when the router does not answer in
/// time; 503 `degraded` when the store is down or refuses writes; `degraded`
/// also when Redis is configured and unreachable (the instance still serves
/// its own clients then, so that alone is not a 503).
fn health(ctx: &HttpContext) -> Answer {
    if !ctx.router.ping(ROUTER_DEADLINE) {
        return Answer::json(
            503,
            &json!({
                "success": false,
                "status": "unhealthy",
                "error": "the router does not answer.",
                "instanceId": ctx.instance_id,
            }),
        );
    }
    let db = ctx.store.is_healthy();
    let redis = ctx.redis.as_ref().map(|bus| bus.is_healthy());
    let healthy = db && redis != Some(false);
    let mut body = json!({
        "success": db,
        "status": if healthy { "healthy" } else { "degraded" },
        "db": db,
        "redis": redis,
        "connections": ctx.connections.open(),
        "uptime": ctx.started.elapsed().as_secs(),
        "instanceId": ctx.instance_id,
    });
    if !db {
        body["error"] = json!("the message store is unavailable.");
    }
    Answer::json(if db { 200 } else { 503 }, &body)
}

/// `GET /metrics`: the Prometheus text exposition.
fn metrics(ctx: &HttpContext) -> Answer {
    let mut text = ctx.metrics.render();
    ctx.stats.render(&mut text);
    Answer::bytes("text/plain; version=0.0.4; charset=utf-8", text.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_knows_every_route() {
        let name = |path: &str| match resolve(path).map(|(e, _)| e) {
            Some(Endpoint::Page(_)) => "page".to_string(),
            Some(Endpoint::Connect) => "connect".into(),
            Some(Endpoint::Stream(room)) => format!("stream {room}"),
            Some(Endpoint::Members(room)) => format!("members {room}"),
            Some(Endpoint::History(room)) => format!("history {room}"),
            Some(Endpoint::Metrics) => "metrics".into(),
            Some(_) => "other".into(),
            None => "none".into(),
        };
        assert_eq!(name("/"), "page");
        assert_eq!(name("/app.js"), "page");
        assert_eq!(name("/api/connect"), "connect");
        assert_eq!(name("/api/messages/gen%65ral"), "stream general");
        assert_eq!(name("/api/rooms/x/members"), "members x");
        assert_eq!(name("/api/rooms/x/history"), "history x");
        assert_eq!(name("/metrics"), "metrics");
        assert_eq!(name("/api/nope"), "none");
        assert_eq!(name("/api/rooms/x/y"), "none");
        assert_eq!(name("/www/app.js"), "none");
    }
}
