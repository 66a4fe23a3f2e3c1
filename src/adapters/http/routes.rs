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
use std::net::IpAddr;

use super::request::{
    check_limits, declared_length, header, parse_json, parse_json_requiring, percent_decode, query_param, read_json,
    read_json_requiring, session_token, split_url, JsonBody,
};
use super::response::{send, Answer, Handled, Refusal};
use super::{sse, ws, HttpContext};
use crate::command::{parse_input, Command, Input};
use crate::error::ChatError;
use crate::event::{rfc3339, Protocol, SessionId};
use crate::names::normalize_room;
use crate::accounts::Secret;
use crate::router::{Reply, RouterMsg, SessionRef};

/// Everything the server answers, by path.
enum Endpoint {
    Page(&'static Asset),
    Connect,
    Register,
    Logout,
    Password,
    /// `GET /api/session`: who the cookie's session is.
    WhoAmI,
    /// `GET /api/dms`: the session's DM conversations.
    Dms,
    /// `GET /api/dms/:nick/history`
    DmHistory(String),
    Disconnect,
    Command,
    Message,
    /// `POST /api/presence`: online or away.
    Presence,
    /// `POST /api/typing`: the session is typing in its room.
    Typing,
    /// `GET /api/messages/:room`, the SSE stream.
    Stream(String),
    /// `GET /api/ws`, the WebSocket.
    WebSocket,
    Rooms,
    Members(String),
    History(String),
    /// `POST /api/rooms/:room/read`
    Read(String),
    /// `GET /api/rooms/:room/search`
    Search(String),
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
    /// `/api/messages/{…}`: GET a room's stream; PATCH (edit) or DELETE a message.
    StreamOrChange,
}

impl Verbs {
    fn allows(self, method: &Method) -> bool {
        match self {
            Verbs::Read => matches!(method, Method::Get | Method::Head),
            Verbs::Write => *method == Method::Post,
            Verbs::Stream => *method == Method::Get,
            Verbs::StreamOrChange => matches!(method, Method::Get | Method::Patch | Method::Delete),
        }
    }

    /// The `Allow` header.
    fn allow(self) -> &'static str {
        match self {
            Verbs::Read => "GET, HEAD, OPTIONS",
            Verbs::Write => "POST, OPTIONS",
            Verbs::Stream => "GET, OPTIONS",
            Verbs::StreamOrChange => "GET, PATCH, DELETE, OPTIONS",
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
    Route { path: "/api/register", verbs: Verbs::Write, endpoint: |_| Endpoint::Register },
    Route { path: "/api/logout", verbs: Verbs::Write, endpoint: |_| Endpoint::Logout },
    Route { path: "/api/password", verbs: Verbs::Write, endpoint: |_| Endpoint::Password },
    Route { path: "/api/session", verbs: Verbs::Read, endpoint: |_| Endpoint::WhoAmI },
    Route { path: "/api/dms", verbs: Verbs::Read, endpoint: |_| Endpoint::Dms },
    Route { path: "/api/dms/{nick}/history", verbs: Verbs::Read, endpoint: |mut p| Endpoint::DmHistory(p.remove(0)) },
    Route { path: "/api/command", verbs: Verbs::Write, endpoint: |_| Endpoint::Command },
    Route { path: "/api/message", verbs: Verbs::Write, endpoint: |_| Endpoint::Message },
    // GET: the room's stream; PATCH and DELETE: the message with that id.
    Route { path: "/api/messages/{room}", verbs: Verbs::StreamOrChange, endpoint: |mut p| Endpoint::Stream(p.remove(0)) },
    Route { path: "/api/presence", verbs: Verbs::Write, endpoint: |_| Endpoint::Presence },
    Route { path: "/api/typing", verbs: Verbs::Write, endpoint: |_| Endpoint::Typing },
    Route { path: "/api/ws", verbs: Verbs::Stream, endpoint: |_| Endpoint::WebSocket },
    Route { path: "/api/rooms", verbs: Verbs::Read, endpoint: |_| Endpoint::Rooms },
    Route { path: "/api/rooms/{room}/members", verbs: Verbs::Read, endpoint: |mut p| Endpoint::Members(p.remove(0)) },
    Route { path: "/api/rooms/{room}/history", verbs: Verbs::Read, endpoint: |mut p| Endpoint::History(p.remove(0)) },
    Route { path: "/api/rooms/{room}/read", verbs: Verbs::Write, endpoint: |mut p| Endpoint::Read(p.remove(0)) },
    Route { path: "/api/rooms/{room}/search", verbs: Verbs::Read, endpoint: |mut p| Endpoint::Search(p.remove(0)) },
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
    let from = Caller { cookie: cookie_token(request), peer: request.remote_addr().map(|a| a.ip()) };
    // Without the cookie, the body must name the session.
    let session_field = from.cookie.is_none().then_some("sessionId");
    let answer = match endpoint {
        Endpoint::Page(asset) => Answer::bytes(asset.content_type, asset.body.to_vec()),
        Endpoint::Connect => connect(read_json(request, max)?, &from, ctx)?,
        Endpoint::Register => register(read_json(request, max)?, &from, ctx)?,
        Endpoint::Logout => logout(read_json_or_empty(request, max)?, &from, ctx)?,
        Endpoint::Password => password(read_json_requiring(request, max, session_field)?, &from, ctx)?,
        Endpoint::Disconnect => disconnect(read_json_or_empty(request, max)?, &from, ctx)?,
        Endpoint::WhoAmI => who_am_i(query_param(query, "sessionId").as_deref(), &from, ctx)?,
        Endpoint::Dms => dms(query, &from, ctx)?,
        Endpoint::DmHistory(nick) => dm_history(&nick, query, &from, ctx)?,
        Endpoint::Command => command(read_json_requiring(request, max, session_field)?, &from, ctx)?,
        Endpoint::Message => message(read_json_requiring(request, max, session_field)?, &from, ctx)?,
        Endpoint::Stream(id) if method == Method::Patch => {
            edit_message(&id, read_json_requiring(request, max, session_field)?, &from, ctx)?
        }
        Endpoint::Stream(id) if method == Method::Delete => {
            // The body is optional: the session may be in the query or the cookie.
            let bodiless = declared_length(request).unwrap_or(0) == 0 && header(request, "Transfer-Encoding").is_none();
            let body = if bodiless { SessionBody::default() } else { read_json(request, max)? };
            delete_message(&id, query, body, &from, ctx)?
        }
        Endpoint::Presence => presence(read_json_requiring(request, max, session_field)?, &from, ctx)?,
        Endpoint::Typing => typing(read_json_or_empty(request, max)?, &from, ctx)?,
        Endpoint::Stream(room) => return Ok(Routed::Stream(room)),
        Endpoint::WebSocket => return Ok(Routed::WebSocket),
        Endpoint::Rooms => rooms(viewer(query, &from, ctx), ctx)?,
        Endpoint::Read(room) => read(&room, read_json_requiring(request, max, session_field)?, &from, ctx)?,
        Endpoint::Search(room) => search(&room, query, viewer(query, &from, ctx), ctx)?,
        Endpoint::Members(room) => members(&room, viewer(query, &from, ctx), ctx)?,
        Endpoint::History(room) => history(&room, query, viewer(query, &from, ctx), ctx)?,
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
    /// Required for a registered nickname.
    password: Option<String>,
}

impl JsonBody for ConnectBody {
    const FIELDS: &'static [(&'static str, bool)] = &[("nickname", true), ("password", false)];
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterBody {
    nickname: String,
    password: String,
}

impl JsonBody for RegisterBody {
    const FIELDS: &'static [(&'static str, bool)] = &[("nickname", true), ("password", true)];
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PasswordBody {
    session_id: Option<String>,
    old: String,
    new: String,
}

impl JsonBody for PasswordBody {
    const FIELDS: &'static [(&'static str, bool)] = &[("sessionId", false), ("old", true), ("new", true)];
}

/// A session named in the body, or by the `bd_session` cookie.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SessionBody {
    session_id: Option<String>,
}

impl JsonBody for SessionBody {
    const FIELDS: &'static [(&'static str, bool)] = &[("sessionId", false)];
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommandBody {
    session_id: Option<String>,
    command: String,
}

impl JsonBody for CommandBody {
    const FIELDS: &'static [(&'static str, bool)] = &[("sessionId", false), ("command", true)];
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageBody {
    session_id: Option<String>,
    content: String,
    /// If given, must be the session's current room.
    room: Option<String>,
    /// The client's own id for the message (a UUID): a retry with the same
    /// id is answered with the first message and posts nothing new.
    client_msg_id: Option<String>,
    /// An action (`/me`): shown as `[room] * nick content`.
    #[serde(default)]
    action: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PresenceBody {
    session_id: Option<String>,
    /// `online` or `away`.
    status: String,
    /// The away message.
    message: Option<String>,
}

impl JsonBody for PresenceBody {
    const FIELDS: &'static [(&'static str, bool)] = &[("sessionId", false), ("status", true), ("message", false)];
}

/// The command a presence body asks for.
fn presence_command(body: PresenceBody) -> Result<Command, Refusal> {
    match body.status.trim() {
        "online" => Ok(Command::Back),
        "away" => Ok(Command::Away(body.message.filter(|m| !m.trim().is_empty()))),
        _ => Err(Refusal::bad("'status' must be \"online\" or \"away\".")),
    }
}

impl JsonBody for MessageBody {
    const FIELDS: &'static [(&'static str, bool)] =
        &[("sessionId", false), ("content", true), ("room", false), ("clientMsgId", false)];
}

/// A `clientMsgId`: a UUID.
pub(super) fn client_msg_id(text: Option<&str>) -> Result<Option<Uuid>, String> {
    text.map(|t| Uuid::parse_str(t.trim()).map_err(|_| "clientMsgId must be a UUID.".to_string())).transpose()
}

/// The JSON bodies the API accepts, by endpoint, for the fuzz targets.
pub(super) const BODIES: &[&str] =
    &["/api/connect", "/api/disconnect", "/api/command", "/api/message", "PATCH /api/messages/:id", "/api/presence"];

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
            if let Some(id) = parse_json::<SessionBody>(body)?.session_id {
                session_token(&id)?;
            }
        }
        Some("/api/command") => {
            let body: CommandBody = parse_json_requiring(body, Some("sessionId"))?;
            session_token(body.session_id.as_deref().unwrap_or_default())?;
            parse_input(&body.command)?;
        }
        Some("/api/message") => {
            let body: MessageBody = parse_json_requiring(body, Some("sessionId"))?;
            session_token(body.session_id.as_deref().unwrap_or_default())?;
            if let Some(room) = &body.room {
                normalize_room(room)?;
            }
            crate::names::clean_message(&body.content, 2000)?;
        }
        Some("PATCH /api/messages/:id") => {
            let body: EditBody = parse_json_requiring(body, Some("sessionId"))?;
            session_token(body.session_id.as_deref().unwrap_or_default())?;
            crate::names::clean_message(&body.content, 2000)?;
        }
        Some("/api/presence") => {
            let body: PresenceBody = parse_json_requiring(body, Some("sessionId"))?;
            session_token(body.session_id.as_deref().unwrap_or_default())?;
            if let Command::Away(Some(message)) = presence_command(body)? {
                crate::names::clean_message(&message, 200)?;
            }
        }
        _ => return Err(Refusal::new(404, "no such endpoint")),
    }
    Ok(())
}

/// A body that may be left out (logout and disconnect by cookie).
fn read_json_or_empty<T: JsonBody + Default>(request: &mut Request, max: usize) -> Result<T, Refusal> {
    if declared_length(request) == Some(0) {
        return Ok(T::default());
    }
    read_json(request, max)
}

/// Who is asking: the `bd_session` cookie, and the client's address (for
/// the login-attempt limit).
pub struct Caller {
    pub cookie: Option<String>,
    pub peer: Option<IpAddr>,
}

const COOKIE: &str = "bd_session";

/// The `bd_session` cookie's value, if the request has one.
pub fn cookie_token(request: &Request) -> Option<String> {
    request
        .headers()
        .iter()
        .filter(|h| h.field.equiv("Cookie"))
        .flat_map(|h| h.value.as_str().split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
}

/// `Set-Cookie` for a session: a lasting one for an account, else one
/// that ends with the browser session.
fn session_cookie(token: Uuid, lasting: Option<std::time::Duration>) -> String {
    let mut cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    if let Some(ttl) = lasting {
        cookie.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    cookie
}

fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

fn accounts(ctx: &HttpContext) -> Result<&crate::accounts::Accounts, Refusal> {
    ctx.accounts.as_deref().ok_or_else(|| Refusal::new(503, "accounts are not available on this server."))
}

/// The session a request names: `sessionId` in the body or query wins,
/// else the cookie. A registered user's session that this process does not
/// hold (a restart, another instance) is brought back from the store, by
/// its cookie, while it has not expired. An unknown `sessionId` is 404 (from
/// the router, when the request reaches it); a cookie that names no session
/// (forged, expired, logged out) is 401.
pub fn resolve_session(given: Option<&str>, from: &Caller, ctx: &HttpContext) -> Result<Uuid, Refusal> {
    let (text, by_cookie) = match given.map(str::trim).filter(|t| !t.is_empty()) {
        Some(text) => (text.to_string(), false),
        None => match &from.cookie {
            Some(cookie) => (cookie.clone(), true),
            None => {
                return Err(Refusal::bad(
                    "missing sessionId: give it in the request, or connect first to get the bd_session cookie.",
                ))
            }
        },
    };
    let expired = || {
        if by_cookie {
            Refusal::new(401, "your session has ended or is not valid. Log in again with POST /api/connect.")
        } else {
            ChatError::UnknownSession.into()
        }
    };
    let Ok(token) = Uuid::parse_str(&text) else { return Err(expired()) };
    if !by_cookie {
        // The router answers an unknown one (404) with the request itself:
        // no extra round trip on the hot path of API clients.
        return Ok(token);
    }
    if ctx.router.session(token)?.is_some() {
        return Ok(token);
    }
    let accounts = accounts(ctx)?;
    let hash = crate::accounts::token_hash(&token);
    let now = crate::event::now_ms();
    let account = accounts.store.query(move |store| store.session_account(&hash, now)).map_err(|e| {
        log::warn!("cannot check a stored session: {e}");
        Refusal::from(ChatError::StoreUnavailable)
    })?;
    let Some(account) = account else { return Err(expired()) };
    ctx.router.send(RouterMsg::Open { session: SessionId::next(), protocol: Protocol::Http, token: Some(token), sink: None });
    let session = SessionRef::Token(token);
    let (user_id, nickname) = (account.user_id, account.nickname);
    match ctx.router.call(|reply| RouterMsg::LoginAccount { session, user_id, nickname, missed_dms: false, reply }) {
        Ok(_) => Ok(token),
        Err(e) => {
            ctx.router.send(RouterMsg::Close { session });
            Err(e.into())
        }
    }
}

/// Stores a registered user's session token (as a hash) so that it lasts.
fn keep_session(token: Uuid, user_id: i64, ctx: &HttpContext) -> Result<(), Refusal> {
    let accounts = accounts(ctx)?;
    let hash = crate::accounts::token_hash(&token);
    let now = crate::event::now_ms();
    let expires = now + accounts.session_ttl.as_millis() as i64;
    accounts.store.query(move |store| store.save_session(&hash, user_id, now, expires)).map_err(|e| {
        log::warn!("cannot store a session: {e}");
        Refusal::from(ChatError::StoreUnavailable)
    })
}

/// Opens a new HTTP session and names it: as a guest, or with `password`
/// as the account. Answers with the session (closed again on failure).
fn open_session(nickname: &str, password: Option<&Secret>, from: &Caller, ctx: &HttpContext) -> Result<(Uuid, Reply), Refusal> {
    let token = Uuid::new_v4();
    let session = SessionRef::Token(token);
    ctx.router.send(RouterMsg::Open {
        session: SessionId::next(),
        protocol: Protocol::Http,
        token: Some(token),
        sink: None,
    });
    let nickname = nickname.trim().to_string();
    let outcome = match password {
        Some(password) => accounts(ctx).map_err(Some).and_then(|a| a.login(session, &nickname, password, from.peer, false).map_err(|e| { let r: Refusal = e.into(); Some(r) })),
        None => ctx.router.call(|reply| RouterMsg::Login { session, nickname, reply }).map_err(|e| Some(e.into())),
    };
    match outcome {
        Ok(reply @ Reply::LoggedIn { .. }) => Ok((token, reply)),
        outcome => {
            ctx.router.send(RouterMsg::Close { session });
            Err(match outcome {
                Err(Some(refusal)) if refusal.status == 404 && refusal.message == ChatError::UnknownSession.to_string() => {
                    ChatError::ShuttingDown.into()
                }
                Err(Some(refusal)) => refusal,
                _ => Refusal::new(500, "unexpected answer from the router."),
            })
        }
    }
}

fn connected(token: Uuid, reply: Reply) -> Value {
    match reply {
        Reply::LoggedIn { user_id, nickname, .. } => {
            json!({ "sessionId": token.to_string(), "userId": user_id, "nickname": nickname })
        }
        _ => Value::Null,
    }
}

/// `POST /api/connect {"nickname","password"?}`: a new session, named under
/// the same rules as a TCP user's nickname; a registered nickname needs its
/// password (401 without it or with a wrong one). Sets the cookie.
fn connect(body: ConnectBody, from: &Caller, ctx: &HttpContext) -> Handled {
    let password = body.password.as_deref().filter(|p| !p.is_empty()).map(Secret::new);
    let (token, reply) = open_session(&body.nickname, password.as_ref(), from, ctx)?;
    let lasting = match (&password, &reply) {
        (Some(_), Reply::LoggedIn { user_id, .. }) => {
            keep_session(token, *user_id, ctx)?;
            Some(accounts(ctx)?.session_ttl)
        }
        _ => None,
    };
    Ok(Answer::data(connected(token, reply)).with_header("Set-Cookie", session_cookie(token, lasting)))
}

/// `POST /api/register {"nickname","password"}`: a new session whose
/// nickname is registered at once. 201 and the connect answer; sets the cookie.
fn register(body: RegisterBody, from: &Caller, ctx: &HttpContext) -> Handled {
    let accounts = accounts(ctx)?;
    let password = Secret::new(&body.password);
    crate::accounts::validate_password(&password)?;
    let (token, reply) = open_session(&body.nickname, None, from, ctx).map_err(|refusal| {
        if refusal.status == 401 {
            ChatError::AlreadyRegistered(body.nickname.trim().to_string()).into()
        } else {
            refusal
        }
    })?;
    let session = SessionRef::Token(token);
    if let Err(e) = accounts.register(session, &password) {
        ctx.router.send(RouterMsg::Close { session });
        return Err(e.into());
    }
    let Reply::LoggedIn { user_id, .. } = &reply else { unreachable!("open_session answers LoggedIn") };
    keep_session(token, *user_id, ctx)?;
    let answer = Answer::json(201, &json!({ "success": true, "data": connected(token, reply) }));
    Ok(answer.with_header("Set-Cookie", session_cookie(token, Some(accounts.session_ttl))))
}

/// `POST /api/logout`: ends the session here and in the store (a lasting
/// session is over everywhere), and clears the cookie.
fn logout(body: SessionBody, from: &Caller, ctx: &HttpContext) -> Handled {
    let token = resolve_session(body.session_id.as_deref(), from, ctx)?;
    if ctx.router.session(token)?.is_none() {
        return Err(ChatError::UnknownSession.into());
    }
    ctx.router.send(RouterMsg::Close { session: SessionRef::Token(token) });
    let hash = crate::accounts::token_hash(&token);
    let now = crate::event::now_ms();
    accounts(ctx)?.store.query(move |store| store.delete_session(&hash, now)).map_err(|e| {
        log::warn!("cannot end a stored session: {e}");
        Refusal::from(ChatError::StoreUnavailable)
    })?;
    Ok(Answer::success().with_header("Set-Cookie", clear_cookie()))
}

/// `POST /api/password {"old","new"}`
fn password(body: PasswordBody, from: &Caller, ctx: &HttpContext) -> Handled {
    let token = resolve_session(body.session_id.as_deref(), from, ctx)?;
    let (old, new) = (Secret::new(&body.old), Secret::new(&body.new));
    accounts(ctx)?.change_password(SessionRef::Token(token), &old, &new, from.peer)?;
    Ok(Answer::success())
}

/// `GET /api/session`: the session the cookie (or `?sessionId=`) names,
/// brought back from the store for a registered user after a restart; how
/// the page finds its session again after a reload.
fn who_am_i(given: Option<&str>, from: &Caller, ctx: &HttpContext) -> Handled {
    let token = resolve_session(given, from, ctx)?;
    let identity = ctx.router.identity(SessionRef::Token(token))?.ok_or(ChatError::UnknownSession)?;
    Ok(Answer::data(json!({
        "userId": identity.user_id,
        "nickname": identity.nickname,
        "registered": identity.registered,
    })))
}

/// The account a read request's session is logged in to (403 for a guest).
fn account_of(query: &str, from: &Caller, ctx: &HttpContext) -> Result<crate::router::Identity, Refusal> {
    let token = resolve_session(query_param(query, "sessionId").as_deref(), from, ctx)?;
    let identity = ctx.router.identity(SessionRef::Token(token))?.ok_or(ChatError::UnknownSession)?;
    if !identity.registered {
        return Err(Refusal::new(403, "only registered users have stored direct messages. Use /register <password> first."));
    }
    Ok(identity)
}

fn store_refusal(e: crate::store::StoreError) -> Refusal {
    log::warn!("direct messages unavailable: {e}");
    Refusal::new(503, "the message store is unavailable, so direct messages cannot be shown. Try again shortly.")
}

/// `GET /api/dms`: the session's conversations, the most recent first.
fn dms(query: &str, from: &Caller, ctx: &HttpContext) -> Handled {
    let me = account_of(query, from, ctx)?;
    let user_id = me.user_id;
    let conversations = ctx.store.query(move |store| store.dm_conversations(user_id)).map_err(store_refusal)?;
    let list: Vec<Value> = conversations
        .into_iter()
        .map(|c| json!({ "with": c.with, "lastMessageId": c.last_id, "unread": c.unread, "lastAt": rfc3339(c.last_at_ms) }))
        .collect();
    Ok(Answer::data(json!({ "conversations": list })))
}

/// `GET /api/dms/:nick/history?before=<id>&limit=<n>`: one conversation,
/// oldest first, as room history; what it shows counts as read.
fn dm_history(nick: &str, query: &str, from: &Caller, ctx: &HttpContext) -> Handled {
    let (before, limit) = page_params(query)?;
    crate::names::validate_nickname(nick)?;
    let me = account_of(query, from, ctx)?;
    let other_nick = nick.to_string();
    let other = ctx.store.query(move |store| store.account(&other_nick)).map_err(store_refusal)?;
    let other = other.ok_or_else(|| Refusal::new(404, format!("there is no account named '{nick}'.")))?;
    let (user_id, other_id) = (me.user_id, other.user_id);
    let messages = ctx.store.query(move |store| store.dm_history(user_id, other_id, before, limit)).map_err(store_refusal)?;
    let unread: Vec<i64> = messages.iter().filter(|m| m.recipient_id == user_id).map(|m| m.id).collect();
    if !unread.is_empty() {
        ctx.store.run(move |store| {
            let _ = store.mark_dms_read(user_id, &unread, crate::event::now_ms());
        });
    }
    let messages: Vec<Value> = messages
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "from": m.sender,
                "to": m.recipient,
                "userId": m.sender_id,
                "nickname": m.sender,
                "content": m.content,
                "createdAt": rfc3339(m.created_at_ms),
            })
        })
        .collect();
    Ok(Answer::data(json!({ "with": other.nickname, "messages": messages })))
}

/// `POST /api/disconnect {"sessionId"?}`: ends the session as a TCP client
/// leaving would (its room sees "… disconnected", its nickname is free). A
/// registered user's lasting session stays valid (log out to end it).
fn disconnect(body: SessionBody, from: &Caller, ctx: &HttpContext) -> Handled {
    let token = resolve_session(body.session_id.as_deref(), from, ctx)?;
    if ctx.router.session(token)?.is_none() {
        return Err(ChatError::UnknownSession.into());
    }
    ctx.router.send(RouterMsg::Close { session: SessionRef::Token(token) });
    Ok(Answer::success())
}

/// `POST /api/command {"sessionId","command"}`: any slash command; the
/// answer is the text a TCP user would see.
fn command(body: CommandBody, from: &Caller, ctx: &HttpContext) -> Handled {
    let command = match parse_input(&body.command)? {
        Input::Command(command) => command,
        Input::Message(_) => {
            return Err(Refusal::bad("commands start with /; send chat messages with POST /api/message."))
        }
    };
    let token = resolve_session(body.session_id.as_deref(), from, ctx)?;
    let session = SessionRef::Token(token);
    let accounts = accounts(ctx)?;
    let mut lasting = false;
    let outcome = match &command {
        Command::Register(password) => {
            lasting = true;
            accounts.register(session, password)
        }
        Command::Password { old, new } => accounts.change_password(session, old, new, from.peer),
        Command::Login { nick, password } => {
            lasting = true;
            accounts.login_command(session, nick, password, from.peer)
        }
        _ => ctx.router.call(|reply| RouterMsg::Command { session, command, reply }),
    };
    let text = match outcome? {
        Reply::Text(text) | Reply::Shown(text) => text,
        _ => String::new(),
    };
    let mut answer = Answer::json(200, &json!({ "success": true, "message": text }));
    if lasting {
        if let Some(identity) = ctx.router.identity(session)?.filter(|i| i.registered) {
            keep_session(token, identity.user_id, ctx)?;
            answer = answer.with_header("Set-Cookie", session_cookie(token, Some(accounts.session_ttl)));
        }
    }
    Ok(answer)
}

/// `POST /api/message {"sessionId","content","room"?}`: answered once the
/// message is committed (a 200 means it is stored).
fn message(body: MessageBody, from: &Caller, ctx: &HttpContext) -> Handled {
    let token = resolve_session(body.session_id.as_deref(), from, ctx)?;
    let client_msg_id = client_msg_id(body.client_msg_id.as_deref()).map_err(Refusal::bad)?;
    let (session, text, room, action) = (SessionRef::Token(token), body.content, body.room, body.action.unwrap_or(false));
    match ctx.router.call(|reply| RouterMsg::Say { session, text, room, client_msg_id, action, reply })? {
        Reply::Sent { id, room, created_at_ms } => {
            Ok(Answer::data(json!({ "id": id, "room": room, "createdAt": rfc3339(created_at_ms) })))
        }
        _ => Err(Refusal::new(500, "unexpected answer from the router.")),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EditBody {
    session_id: Option<String>,
    content: String,
}

impl JsonBody for EditBody {
    const FIELDS: &'static [(&'static str, bool)] = &[("sessionId", false), ("content", true)];
}

/// The `:id` of `/api/messages/:id`.
fn message_id(text: &str) -> Result<i64, Refusal> {
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| Refusal::bad("a message id is a positive whole number."))
}

/// `PATCH /api/messages/:id {"sessionId"?,"content"}`: edits one of the
/// session's messages; answered once the edit is committed.
fn edit_message(id: &str, body: EditBody, from: &Caller, ctx: &HttpContext) -> Handled {
    let id = message_id(id)?;
    let session = SessionRef::Token(resolve_session(body.session_id.as_deref(), from, ctx)?);
    let content = Some(body.content);
    match ctx.router.call(|reply| RouterMsg::Change { session, id: Some(id), content, reply })? {
        Reply::Changed { id, room, edited_at_ms } => {
            Ok(Answer::data(json!({ "id": id, "room": room, "editedAt": edited_at_ms.map(rfc3339) })))
        }
        _ => Err(Refusal::new(500, "unexpected answer from the router.")),
    }
}

/// `DELETE /api/messages/:id` (session in the body, the query or the
/// cookie): deletes one of the session's messages, or any message of a
/// private room the session owns; answered once committed.
fn delete_message(id: &str, query: &str, body: SessionBody, from: &Caller, ctx: &HttpContext) -> Handled {
    let id = message_id(id)?;
    let given = body.session_id.or_else(|| query_param(query, "sessionId"));
    let session = SessionRef::Token(resolve_session(given.as_deref(), from, ctx)?);
    match ctx.router.call(|reply| RouterMsg::Change { session, id: Some(id), content: None, reply })? {
        Reply::Changed { .. } => Ok(Answer::success()),
        _ => Err(Refusal::new(500, "unexpected answer from the router.")),
    }
}

/// `POST /api/presence {"status":"online"|"away","message"?}`: the user's
/// status, as `/back` and `/away [message]`.
fn presence(body: PresenceBody, from: &Caller, ctx: &HttpContext) -> Handled {
    let token = resolve_session(body.session_id.as_deref(), from, ctx)?;
    let (session, command) = (SessionRef::Token(token), presence_command(body)?);
    ctx.router.call(|reply| RouterMsg::Command { session, command, reply })?;
    Ok(Answer::success())
}

/// `POST /api/typing {"sessionId"?}`: the session is typing in its current
/// room. Always a success for a session in a room; passed on to the room's
/// other members at most once per `TYPING_INTERVAL_MS`.
fn typing(body: SessionBody, from: &Caller, ctx: &HttpContext) -> Handled {
    let token = resolve_session(body.session_id.as_deref(), from, ctx)?;
    let session = SessionRef::Token(token);
    ctx.router.call(|reply| RouterMsg::Typing { session, reply })?;
    Ok(Answer::success())
}

/// The session a read request names, if any and valid: it sees the private
/// rooms it may enter; without one, only public rooms exist.
fn viewer(query: &str, from: &Caller, ctx: &HttpContext) -> Option<SessionRef> {
    let given = query_param(query, "sessionId").filter(|v| !v.is_empty());
    if given.is_none() && from.cookie.is_none() {
        return None;
    }
    resolve_session(given.as_deref(), from, ctx).ok().map(SessionRef::Token)
}

/// `GET /api/rooms`: with each room's newest message id and, for a
/// registered session, its unread messages and mentions (read from the
/// store in one job; left out if the store cannot answer).
fn rooms(viewer: Option<SessionRef>, ctx: &HttpContext) -> Handled {
    let summaries = ctx.router.rooms_for(viewer)?;
    let account = match viewer {
        Some(v) => ctx.router.identity(v)?.filter(|i| i.registered && i.user_id > 0).map(|i| i.user_id),
        None => None,
    };
    let ids: Vec<i64> = summaries.iter().map(|r| r.id).collect();
    let user_id = account.unwrap_or(0);
    let activity = ctx.store.query(move |store| store.room_activity(user_id, &ids)).map_err(|e| {
        log::warn!("unread counts unavailable: {e}");
    });
    let rooms: Vec<Value> = summaries
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let mut room = json!({ "name": r.name, "memberCount": r.members, "createdAt": rfc3339(r.created_at_ms) });
            if let Some(a) = activity.as_ref().ok().and_then(|a| a.get(i)).filter(|a| a.room_id == r.id) {
                room["lastMessageId"] = json!(a.last_id);
                if account.is_some() {
                    room["unread"] = json!(a.unread);
                    room["mentions"] = json!(a.mentions);
                }
            }
            room
        })
        .collect();
    Ok(Answer::data(json!({ "rooms": rooms })))
}

/// `POST /api/rooms/:room/read {"id"}`: the body's session has read `room`
/// up to message `id`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadBody {
    session_id: Option<String>,
    id: Option<Value>,
}

impl JsonBody for ReadBody {
    // `id` is a number, so it is checked here rather than as a string field.
    const FIELDS: &'static [(&'static str, bool)] = &[("sessionId", false)];
}

/// A read marker's message id: a positive whole number.
pub(super) fn marker_id(id: Option<&Value>) -> Result<i64, Refusal> {
    id.and_then(Value::as_i64)
        .filter(|id| *id > 0)
        .ok_or_else(|| Refusal::bad("'id' must be a message id (a positive whole number)."))
}

fn read(room: &str, body: ReadBody, from: &Caller, ctx: &HttpContext) -> Handled {
    let id = marker_id(body.id.as_ref())?;
    let token = resolve_session(body.session_id.as_deref(), from, ctx)?;
    mark_read(ctx, SessionRef::Token(token), room, id)?;
    Ok(Answer::success())
}

/// Moves a registered session's read marker in `room` forward to message
/// `id` (clamped to the room's newest; never back). A guest is refused
/// (403), a room the session may not see is absent (404).
pub(super) fn mark_read(ctx: &HttpContext, session: SessionRef, room: &str, id: i64) -> Result<crate::store::MarkedRead, Refusal> {
    let identity = ctx.router.identity(session)?.ok_or(ChatError::UnknownSession)?;
    if !identity.registered || identity.user_id <= 0 {
        return Err(ChatError::MarkersNeedAccount.into());
    }
    let name = normalize_room(room)?;
    let room_id = ctx.router.room_for(&name, Some(session))?.ok_or(ChatError::NoSuchRoom(name))?.id;
    let user_id = identity.user_id;
    ctx.store.query(move |store| store.mark_read(user_id, room_id, id, crate::event::now_ms())).map_err(|e| {
        log::warn!("read marker not moved: {e}");
        ChatError::StoreReadUnavailable.into()
    })
}

/// Most matches one search may ask for, and the default.
const SEARCH_MAX: usize = 100;
const SEARCH_DEFAULT: usize = 10;

/// `GET /api/rooms/:room/search?q=<words>&limit=<n>`: the room's messages
/// with every word, newest first, as history items.
fn search(room: &str, query: &str, viewer: Option<SessionRef>, ctx: &HttpContext) -> Handled {
    let words = query_param(query, "q").unwrap_or_default();
    crate::store::search::check_search(&words, ctx.limits.search).map_err(|why| Refusal::bad(format!("'q': {why}")))?;
    let limit = match query_param(query, "limit").filter(|v| !v.is_empty()) {
        None => SEARCH_DEFAULT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=SEARCH_MAX).contains(n))
            .ok_or_else(|| Refusal::bad(format!("'limit' must be a whole number from 1 to {SEARCH_MAX}.")))?,
    };
    let name = normalize_room(room)?;
    let room_id = ctx.router.room_for(&name, viewer)?.ok_or(ChatError::NoSuchRoom(name))?.id;
    let found = ctx.store.query(move |store| store.search(room_id, &words, limit)).map_err(|e| {
        log::warn!("search in room {room_id} failed: {e}");
        Refusal::new(503, "the message store is unavailable, so search cannot run. Try again shortly.")
    })?;
    let messages: Vec<Value> = found.iter().map(history_item).collect();
    Ok(Answer::data(json!({ "messages": messages })))
}

/// One message as history and search list it.
fn history_item(m: &crate::event::ChatMessage) -> Value {
    json!({
        "id": m.id,
        "roomId": m.room_id,
        "userId": m.user_id,
        "content": m.content,
        "createdAt": rfc3339(m.created_at_ms),
        "nickname": m.nickname,
        "editedAt": m.edited_at_ms.map(rfc3339),
        "action": m.action,
    })
}

/// `GET /api/rooms/:room/members`: the members of a room with their
/// status, sorted by nickname.
fn members(room: &str, viewer: Option<SessionRef>, ctx: &HttpContext) -> Handled {
    let name = normalize_room(room)?;
    let members = ctx.router.members_for(&name, viewer)?.ok_or(ChatError::NoSuchRoom(name.clone()))?;
    let members: Vec<Value> = members
        .into_iter()
        .map(|m| json!({ "nickname": m.nickname, "status": m.status.as_str(), "message": m.message }))
        .collect();
    Ok(Answer::data(json!({ "room": name, "members": members })))
}

/// Most messages one history page may ask for, and the default.
const HISTORY_MAX: usize = 100;
const HISTORY_DEFAULT: usize = 50;

/// `?before=<id>&limit=<n>` of a history page.
fn page_params(query: &str) -> Result<(Option<i64>, usize), Refusal> {
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
    Ok((before, limit))
}

/// `GET /api/rooms/:room/history?before=<id>&limit=<n>`: older messages
/// from the store, oldest first.
fn history(room: &str, query: &str, viewer: Option<SessionRef>, ctx: &HttpContext) -> Handled {
    let (before, limit) = page_params(query)?;
    let name = normalize_room(room)?;
    let room_id = ctx.router.room_for(&name, viewer)?.ok_or(ChatError::NoSuchRoom(name))?.id;
    let messages = ctx.store.query(move |store| store.visible_messages_before(room_id, before, limit)).map_err(|e| {
        log::warn!("history of room {room_id} unavailable: {e}");
        Refusal::new(503, "the message store is unavailable, so history cannot be shown. Try again shortly.")
    })?;
    let messages: Vec<Value> = messages.iter().map(history_item).collect();
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
