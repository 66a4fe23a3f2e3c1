use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::SocketAddr;
use std::str::FromStr;

use std::sync::Arc;

use crate::common::{HTTPVersion, Method};
use crate::limits::{ConnState, DeadlineReader, Limits, UpgradedReader};
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // the socket, for `Request::raw_fd` (patched for baby-discord)
    #[cfg(unix)]
    raw_fd: Option<std::os::unix::io::RawFd>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<DeadlineReader>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<DeadlineReader>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // patched for baby-discord (see `limits`): the limits, and the read
    // deadline and abandonment shared with this connection's request bodies
    limits: Limits,
    state: Arc<ConnState>,
    // no request has been read yet
    first_request: bool,
    // the current request's head has begun to arrive
    head_started: bool,

    // true if the connection goes through SSL
    secure: bool,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// patched for baby-discord: a head byte that no header may hold
    InvalidHeadByte,
    /// patched for baby-discord: the head passed `Limits::max_head_bytes`
    HeadTooLarge,
    /// patched for baby-discord: conflicting or unsupported framing headers
    /// (two `Content-Length`s, `Content-Length` with `Transfer-Encoding`)
    AmbiguousFraming(&'static str),
    /// patched for baby-discord: HTTP/2 or later on this HTTP/1 connection
    UnsupportedVersion,
    /// patched for baby-discord: the head started but did not arrive in time
    HeadTimedOut,
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: Limits,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        // The write side's descriptor: it lives as long as a request's
        // response writer, while the read side closes with this connection.
        #[cfg(unix)]
        let raw_fd = write_socket.raw_fd();

        let state = Arc::new(ConnState::default());
        let read_socket = DeadlineReader::new(read_socket, state.clone());
        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            #[cfg(unix)]
            raw_fd,
            next_header_source: first_header,
            no_more_requests: false,
            limits,
            state,
            first_request: true,
            head_started: false,
            secure,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line of the head from self.next_header_source, up to
    /// `LF` (`CRLF` or a bare `LF`), taking its bytes from `budget`.
    ///
    /// Patched for baby-discord: never buffers more than the budget (431),
    /// refuses bytes no header may hold (400) instead of closing silently,
    /// and starts the head's read deadline at its first byte.
    fn read_next_line(&mut self, budget: &mut usize) -> Result<AsciiString, ReadError> {
        let mut buf = Vec::new();

        loop {
            let byte = match self.next_header_source.by_ref().bytes().next() {
                Some(Ok(byte)) => byte,
                Some(Err(e)) if e.kind() == ErrorKind::TimedOut && self.head_started => {
                    return Err(ReadError::HeadTimedOut)
                }
                Some(Err(e)) => return Err(ReadError::ReadIoError(e)),
                None => {
                    let eof = IoError::new(ErrorKind::ConnectionAborted, "Unexpected EOF");
                    return Err(ReadError::ReadIoError(eof));
                }
            };
            if !self.head_started {
                self.head_started = true;
                self.state.set_deadline(self.limits.read_timeout);
            }
            if *budget == 0 {
                return Err(ReadError::HeadTooLarge);
            }
            *budget -= 1;

            if byte == b'\n' {
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                return AsciiString::from_ascii(buf).map_err(|_| ReadError::InvalidHeadByte);
            }
            // Visible ASCII, space and tab only; a CR only before LF.
            let allowed = matches!(byte, b'\t' | b' '..=b'~' | b'\r');
            if !allowed || buf.last() == Some(&b'\r') {
                return Err(ReadError::InvalidHeadByte);
            }
            buf.push(byte);
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        // Patched for baby-discord: a new connection gets the read timeout
        // for its first request, a keep-alive one the idle timeout.
        self.head_started = false;
        let wait = if self.first_request {
            self.limits.read_timeout
        } else {
            self.limits.idle_timeout
        };
        self.first_request = false;
        self.state.set_deadline(wait);
        let mut budget = self.limits.max_head_bytes;

        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let line = self.read_next_line(&mut budget).map_err(|e| match e {
                    ReadError::InvalidHeadByte => ReadError::WrongRequestLine,
                    other => other,
                })?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };
            if version > (1, 1) {
                return Err(ReadError::UnsupportedVersion);
            }

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    let line = self.read_next_line(&mut budget)?;

                    if line.is_empty() {
                        break;
                    };
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };
            check_framing(&headers).map_err(ReadError::AmbiguousFraming)?;

            (method, path, version, headers)
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // Patched for baby-discord: an upgrade is the last request on its
        // connection; its reader keeps only the socket and the bytes read
        // past the head (see `limits::UpgradedReader`).
        let data_source: Box<dyn Read + Send + 'static> = if crate::request::is_upgrade(&headers) {
            UpgradedReader::detach(data_source)
        } else {
            Box::new(data_source)
        };

        // patched for baby-discord: a body small enough to preload must
        // arrive within the read timeout too, counted from the end of the head
        self.state.set_deadline(self.limits.read_timeout);

        // building the next reader
        #[allow(unused_mut)]
        let mut request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
            Some((self.state.clone(), self.limits.preload_body_bytes)),
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e)
                    if e.kind() == ErrorKind::TimedOut =>
                {
                    ReadError::HeadTimedOut
                }
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;
        #[cfg(unix)]
        request.set_raw_fd(self.raw_fd);

        // return the request
        Ok(request)
    }

    /// Answers a request that cannot be served with `status` and a JSON
    /// reason, then reads away (briefly) what the client is still sending,
    /// so that closing the socket does not reset the connection before the
    /// client has read the answer (patched for baby-discord).
    fn refuse(&mut self, status: u16, reason: &str) {
        use crate::{Header, Response};
        const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
        const LINGER_BYTES: u64 = 256 * 1024;

        let mut writer = self.sink.next().unwrap();
        // Our reasons are fixed ASCII sentences without quotes.
        let body = format!("{{\"success\":false,\"error\":\"{}\"}}", reason);
        let response = Response::from_string(body)
            .with_status_code(status)
            .with_header(Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).unwrap())
            .with_header(Header::from_bytes(&b"Connection"[..], &b"close"[..]).unwrap());
        if response.raw_print(&mut writer, HTTPVersion(1, 1), &[], false, None).is_ok() {
            writer.finish_connection();
        }
        drop(writer);
        self.state.set_deadline(Some(LINGER));
        let _ = std::io::copy(
            &mut self.next_header_source.by_ref().take(LINGER_BYTES),
            &mut std::io::sink(),
        );
    }

    /// Whether the last request returned was the last this connection
    /// will serve (patched for baby-discord).
    pub(crate) fn is_finished(&self) -> bool {
        self.no_more_requests
    }
}

/// Refuses the head shapes that let a proxy and this server disagree on
/// where a request ends (request smuggling): two different or malformed
/// `Content-Length`s, `Content-Length` with `Transfer-Encoding`, and any
/// transfer coding but a single `chunked` (patched for baby-discord).
fn check_framing(headers: &[crate::Header]) -> Result<(), &'static str> {
    let mut length: Option<&str> = None;
    for header in headers.iter().filter(|h| h.field.equiv("Content-Length")) {
        let value = header.value.as_str().trim();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.parse::<u64>().is_err() {
            return Err("invalid Content-Length header.");
        }
        match length {
            Some(first) if first != value => return Err("conflicting Content-Length headers."),
            _ => length = Some(value),
        }
    }
    let mut codings = headers.iter().filter(|h| h.field.equiv("Transfer-Encoding"));
    if let Some(coding) = codings.next() {
        if length.is_some() {
            return Err("Content-Length together with Transfer-Encoding is not allowed.");
        }
        if codings.next().is_some() || !coding.value.as_str().trim().eq_ignore_ascii_case("chunked") {
            return Err("unsupported Transfer-Encoding: only chunked is accepted.");
        }
    }
    Ok(())
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        // Patched for baby-discord: every refusal answers with a reason and
        // closes; none writes through a second writer while a request holds
        // one (upstream's 505 did, and waited for it forever).
        let rq = match self.read() {
            Err(ReadError::WrongRequestLine) => {
                self.refuse(400, "malformed request line.");
                return None;
            }
            Err(ReadError::WrongHeader(_)) | Err(ReadError::InvalidHeadByte) => {
                self.refuse(400, "malformed request header.");
                return None;
            }
            Err(ReadError::AmbiguousFraming(reason)) => {
                self.refuse(400, reason);
                return None;
            }
            Err(ReadError::HeadTooLarge) => {
                let reason = format!(
                    "request headers too large: at most {} bytes.",
                    self.limits.max_head_bytes
                );
                self.refuse(431, &reason);
                return None;
            }
            Err(ReadError::UnsupportedVersion) => {
                self.refuse(505, "only HTTP/1.0 and HTTP/1.1 are supported.");
                return None;
            }
            Err(ReadError::HeadTimedOut) => {
                self.refuse(408, "the request took too long to arrive.");
                return None;
            }

            Err(ReadError::ExpectationFailed(ver)) => {
                let writer = self.sink.next().unwrap();
                let response = Response::new_empty(StatusCode(417));
                response.raw_print(writer, ver, &[], true, None).ok();
                return None; // TODO: should be recoverable, but needs handling in case of body
            }

            // the client went away, or stayed idle past the idle timeout
            Err(ReadError::ReadIoError(_)) => return None,

            Ok(rq) => rq,
        };

        // updating the status of the connection
        let connection_header = rq
            .headers()
            .iter()
            .find(|h| h.field.equiv("Connection"))
            .map(|h| h.value.as_str());

        let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

        match lowercase {
            Some(ref val) if val.contains("close") => self.no_more_requests = true,
            Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
            Some(ref val)
                if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
            {
                self.no_more_requests = true
            }
            None if *rq.http_version() <= HTTPVersion(1, 0) => self.no_more_requests = true,
            _ => (),
        };

        // Patched for baby-discord (see vendor/README.md): an event stream
        // is the last request on its connection, so this thread need not
        // wait beside it for a next request that cannot come.
        let event_stream = rq.headers().iter().any(|h| {
            h.field.equiv("Accept") && h.value.as_str().contains("text/event-stream")
        });
        if event_stream {
            self.no_more_requests = true;
        }

        // returning the request
        Some(rq)
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
