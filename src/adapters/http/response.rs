//! Answers: the JSON shapes of the HTTP API (`docs/protocol.md`), refusals with their status, and
//! sending both through tiny_http.
//!
//! Every JSON answer carries `success`; a refusal carries `error`, the same
//! sentence a TCP user would read after `Error: `.

use serde_json::{json, Value};
use tiny_http::{Header, Request, Response};

use super::HttpContext;
use crate::error::ChatError;

/// A complete answer to one request.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// Why a request was refused: a status and a sentence for the user.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
    /// The methods a route takes, for the `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

pub type Handled = Result<Answer, Refusal>;

const JSON: &str = "application/json; charset=utf-8";

impl Answer {
    /// `value` as JSON.
    pub fn json(status: u16, value: &Value) -> Answer {
        Answer { status, content_type: JSON, body: value.to_string().into_bytes(), headers: Vec::new() }
    }

    /// `{"success":true,"data":…}`
    pub fn data(data: Value) -> Answer {
        Answer::json(200, &json!({ "success": true, "data": data }))
    }

    /// `{"success":true}`
    pub fn success() -> Answer {
        Answer::json(200, &json!({ "success": true }))
    }

    pub fn bytes(content_type: &'static str, body: Vec<u8>) -> Answer {
        Answer { status: 200, content_type, body, headers: Vec::new() }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }
}

impl Refusal {
    /// A refusal whose sentence may quote the request (a path, a method, a
    /// name): control and invisible formatting characters are removed from
    /// it, as from a delivered message.
    pub fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal { status, message: crate::names::clean_text(&message.into()), allow: None }
    }

    /// 400: the request itself is wrong.
    pub fn bad(message: impl Into<String>) -> Refusal {
        Refusal::new(400, message)
    }
}

impl From<ChatError> for Refusal {
    fn from(error: ChatError) -> Refusal {
        Refusal::new(error.http_status(), error.to_string())
    }
}

impl From<Refusal> for Answer {
    fn from(refusal: Refusal) -> Answer {
        let answer = Answer::json(refusal.status, &json!({ "success": false, "error": refusal.message }));
        match refusal.allow {
            Some(methods) => answer.with_header("Allow", methods),
            None => answer,
        }
    }
}

/// Sends `answer` and counts it.
///
/// A body the handler left unread (a refused upload) is read away by
/// tiny_http up to a bound, past which the connection is closed instead
/// (see vendor/README.md).
pub fn send(request: Request, answer: Answer, ctx: &HttpContext) {
    ctx.stats.record(answer.status);
    if answer.status >= 500 {
        log::debug!("{} {} answered {}", request.method(), request.url(), answer.status);
    }
    // Errors here mean the client has gone; nothing to tell anyone.
    let _ = request.respond(to_response(answer));
}

fn to_response(answer: Answer) -> Response<std::io::Cursor<Vec<u8>>> {
    // The body is all in memory: always a Content-Length, never chunked
    // (tiny_http chunks from 32 KiB; the OpenAPI document is larger).
    let mut response =
        Response::from_data(answer.body).with_status_code(answer.status).with_chunked_threshold(usize::MAX);
    response.add_header(header("Content-Type", answer.content_type));
    response.add_header(header("Cache-Control", "no-cache"));
    response.add_header(header("Access-Control-Allow-Origin", "*"));
    for (name, value) in &answer.headers {
        response.add_header(header(name, value));
    }
    response
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("our header names and values are ASCII")
}
