//! Reading requests: URL pieces, query parameters, the size limits
//! (`MAX_BODY_BYTES`, `MAX_HEADER_BYTES`) and JSON bodies.
//!
//! tiny_http itself limits nothing. It reads the request line and headers
//! into memory however long they are (tiny-http issue #56; the PR adding a
//! limit, #232, was never merged), so the 431 check here runs after the
//! head has been read: it refuses big heads, it cannot stop a client from
//! making tiny_http buffer one. Bodies are read here, never more than the
//! limit plus one byte.

use std::io::Read;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tiny_http::Request;
use uuid::Uuid;

use super::response::Refusal;
use crate::error::ChatError;

/// Splits a request target into its path and query (without the `?`).
pub fn split_url(url: &str) -> (&str, &str) {
    let url = url.split('#').next().unwrap_or("");
    url.split_once('?').unwrap_or((url, ""))
}

/// The first value of query parameter `name`, decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(key, _)| percent_decode(key, true) == name)
        .map(|(_, value)| percent_decode(value, true))
}

/// Decodes `%XX` escapes (and `+` as a space in queries); invalid UTF-8
/// becomes U+FFFD, which no name or id accepts.
pub fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A header's value, if the request has it.
pub fn header<'r>(request: &'r Request, name: &'static str) -> Option<&'r str> {
    request.headers().iter().find(|h| h.field.equiv(name)).map(|h| h.value.as_str())
}

/// The body length the client declared, if it declared a valid one.
pub fn declared_length(request: &Request) -> Option<usize> {
    header(request, "Content-Length").and_then(|v| v.trim().parse().ok())
}

/// Refuses heads over `max` bytes (431) and declared bodies over
/// `max_body` (413) before anything else looks at the request.
pub fn check_limits(request: &Request, max_head: usize, max_body: usize) -> Result<(), Refusal> {
    // "METHOD SP target SP HTTP/x.y CRLF", then "name: value CRLF" each.
    let line = request.method().as_str().len() + request.url().len() + 12;
    let head: usize =
        line + request.headers().iter().map(|h| h.field.as_str().as_str().len() + h.value.len() + 4).sum::<usize>();
    if head > max_head {
        return Err(Refusal::new(431, format!("request headers too large: at most {max_head} bytes.")));
    }
    if let Some(value) = header(request, "Content-Length") {
        match value.trim().parse::<u64>() {
            Ok(n) if n > max_body as u64 => return Err(too_large(max_body)),
            Ok(_) => {}
            Err(_) => return Err(Refusal::bad("invalid Content-Length header.")),
        }
    }
    Ok(())
}

fn too_large(max: usize) -> Refusal {
    Refusal::new(413, format!("request body too large: at most {max} bytes."))
}

/// Reads the whole body, refusing it (413) once it passes `max` bytes;
/// this also covers chunked uploads, which declare no length. Bodies up to
/// `MAX_BODY_BYTES` are already in memory (tiny_http read them under the
/// read timeout), so this normally does not wait on the client.
pub fn read_body(request: &mut Request, max: usize) -> Result<Vec<u8>, Refusal> {
    let mut body = Vec::with_capacity(declared_length(request).unwrap_or(0).min(max));
    request.as_reader().take(max as u64 + 1).read_to_end(&mut body).map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => Refusal::new(408, "the request body took too long to arrive."),
        _ => Refusal::bad(format!("could not read the request body: {e}")),
    })?;
    if body.len() > max {
        return Err(too_large(max));
    }
    Ok(body)
}

/// A JSON request body. Every field is a string; `FIELDS` names them and
/// says which are required, so a refusal can name the field at fault
/// (serde's own type errors do not).
pub trait JsonBody: DeserializeOwned {
    const FIELDS: &'static [(&'static str, bool)];
}

/// Reads and checks a JSON body: 400 for invalid UTF-8, malformed JSON, a
/// missing field or a field of the wrong type, each with the reason.
pub fn read_json<T: JsonBody>(request: &mut Request, max: usize) -> Result<T, Refusal> {
    read_json_requiring(request, max, None)
}

/// [`read_json`], with one optional field required this time (`sessionId`
/// when no cookie names the session).
pub fn read_json_requiring<T: JsonBody>(request: &mut Request, max: usize, also: Option<&str>) -> Result<T, Refusal> {
    parse_json_requiring(&read_body(request, max)?, also)
}

/// Checks and decodes a body already read (see [`read_json`]).
pub fn parse_json<T: JsonBody>(body: &[u8]) -> Result<T, Refusal> {
    parse_json_requiring(body, None)
}

/// [`parse_json`], with one optional field required this time.
pub fn parse_json_requiring<T: JsonBody>(body: &[u8], also: Option<&str>) -> Result<T, Refusal> {
    let text = std::str::from_utf8(body).map_err(|_| Refusal::bad("the request body is not valid UTF-8."))?;
    if text.trim().is_empty() {
        return Err(Refusal::bad("the request body is empty; send a JSON object."));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| Refusal::bad(format!("malformed JSON: {e}")))?;
    let Value::Object(fields) = &value else {
        return Err(Refusal::bad("the request body must be a JSON object."));
    };
    for &(name, required) in T::FIELDS {
        let required = required || also == Some(name);
        match fields.get(name) {
            None | Some(Value::Null) if required => return Err(Refusal::bad(format!("missing field '{name}'."))),
            Some(v) if !v.is_string() && !v.is_null() => {
                return Err(Refusal::bad(format!("field '{name}' must be a string.")))
            }
            _ => {}
        }
    }
    serde_json::from_value(value).map_err(|e| Refusal::bad(format!("invalid request body: {e}")))
}

/// A `sessionId` as the router knows it; anything that is not one of our
/// UUIDs is an unknown session (404).
pub fn session_token(text: &str) -> Result<Uuid, Refusal> {
    Uuid::parse_str(text.trim()).map_err(|_| ChatError::UnknownSession.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_and_decode() {
        assert_eq!(split_url("/api/rooms?limit=5#x"), ("/api/rooms", "limit=5"));
        assert_eq!(split_url("/"), ("/", ""));
        assert_eq!(query_param("a=1&sessionId=ab%2Dc&b", "sessionId").as_deref(), Some("ab-c"));
        assert_eq!(query_param("a=1&b", "b").as_deref(), Some(""));
        assert_eq!(query_param("a=1", "c"), None);
        assert_eq!(percent_decode("a+b%20c%zz%", true), "a b c%zz%");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("%C3%A9", false), "é");
    }
}
