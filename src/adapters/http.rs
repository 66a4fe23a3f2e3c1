//! The HTTP API, Server-Sent Events and the web page (SPEC §4, §5).
