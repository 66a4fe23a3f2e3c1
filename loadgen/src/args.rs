//! Command-line parsing (by hand, long options only).

use std::time::Duration;

/// One server instance to load: host plus its TCP and HTTP ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub tcp_port: u16,
    pub http_port: u16,
}

impl Target {
    pub fn label(&self) -> String {
        format!("{}:{}:{}", self.host, self.tcp_port, self.http_port)
    }
}

/// Everything the run needs, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub tcp: usize,
    pub sse: usize,
    pub ws: usize,
    pub senders: usize,
    pub rate: f64,
    pub duration: Duration,
    pub room: String,
    pub targets: Vec<Target>,
    pub server_pids: Vec<u32>,
    pub json: bool,
    /// `None`: exit 1 on any loss.
    pub max_loss: Option<u64>,
    pub connect_rate: f64,
    pub nick_prefix: String,
    pub sender_http: bool,
    pub sender_ws: bool,
    pub drain: Duration,
    pub setup_timeout: Duration,
    pub cleanup: bool,
    /// Receivers (SSE first, then WebSocket) that send typing signals
    /// during the run.
    pub typers: usize,
    /// How often each typer signals.
    pub typing_every: Duration,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            tcp: 100,
            sse: 0,
            ws: 0,
            senders: 10,
            rate: 100.0,
            duration: Duration::from_secs(10),
            room: "load".to_string(),
            targets: vec![Target { host: "127.0.0.1".into(), tcp_port: 9001, http_port: 3001 }],
            server_pids: Vec::new(),
            json: false,
            max_loss: None,
            connect_rate: 2000.0,
            nick_prefix: "lg".to_string(),
            sender_http: false,
            sender_ws: false,
            drain: Duration::from_secs(2),
            setup_timeout: Duration::from_secs(60),
            cleanup: true,
            typers: 0,
            typing_every: Duration::from_secs(1),
        }
    }
}

pub const HELP: &str = "\
loadgen — load generator for baby-discord (TCP line protocol, HTTP/SSE, WebSocket)

USAGE: loadgen [OPTIONS]

Clients:
  --tcp N                 TCP receiving clients (default 100)
  --sse N                 SSE receiving clients (default 0)
  --ws N                  WebSocket receiving clients (default 0)
  --senders S             sending clients, not counted in N (default 10)
  --sender-http           senders POST /api/message over kept-alive HTTP/1.1
                          instead of being TCP clients
  --sender-ws             senders send message frames over a WebSocket each
                          (acknowledged by ack frames once committed)
  --room NAME             room everyone joins (default \"load\"; created by
                          the first client on each target if missing)
  --nick-prefix P         nickname prefix (default \"lg\"); a short per-run
                          tag and the client kind/index are appended
Load:
  --rate R                total messages per second over all senders
                          (default 100), spread evenly across senders and time
  --duration SECS         sending time (default 10)
  --drain SECS            wait for late deliveries after sending (default 2)
  --connect-rate N        max new connections per second in setup (default 2000)
  --typers N              N of the SSE receivers (then WebSocket receivers)
                          send typing signals all through the run: SSE ones
                          POST /api/typing on a connection of their own, WS
                          ones send {\"type\":\"typing\"} frames (the server
                          passes on one per 2 s per session)
  --typing-every SECS     how often each typer signals (default 1)
  --setup-timeout SECS    give up waiting for clients to join (default 60)
Servers:
  --targets LIST          comma-separated host:tcpport:httpport triples
                          (default 127.0.0.1:9001:3001); clients and senders
                          are spread round-robin across them
  --server-pid PID[,PID]  report the servers' summed VmRSS before and after
Output / exit:
  --json                  also print the report as one JSON object
  --max-loss N            exit 1 if more than N deliveries were lost
                          (default: exit 1 on any loss)
  --no-cleanup            do not POST /api/disconnect for HTTP sessions at the end
  --help                  this text

Exit status: 0 ok; 1 when losses exceed --max-loss or some clients never
joined; 2 bad arguments.
";

/// Outcome of parsing: either run with `Args` or print help.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Run(Box<Args>),
    Help,
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.trim().parse::<T>().map_err(|_| format!("{flag}: bad value '{v}'"))
}

fn secs(flag: &str, v: &str) -> Result<Duration, String> {
    let f: f64 = num(flag, v)?;
    if !f.is_finite() || !(0.0..=1.0e7).contains(&f) {
        return Err(format!("{flag}: bad value '{v}'"));
    }
    Ok(Duration::from_secs_f64(f))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub fn parse_targets(v: &str) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        // host may be an IPv6 literal in brackets: [::1]:9001:3001
        let (host, rest) = if let Some(stripped) = item.strip_prefix('[') {
            let end = stripped.find(']').ok_or_else(|| format!("--targets: bad target '{item}'"))?;
            (stripped[..end].to_string(), stripped[end + 1..].strip_prefix(':').unwrap_or(""))
        } else {
            match item.split_once(':') {
                Some((h, r)) => (h.to_string(), r),
                None => return Err(format!("--targets: '{item}' is not host:tcpport:httpport")),
            }
        };
        let (t, h) = rest.split_once(':').ok_or_else(|| format!("--targets: '{item}' is not host:tcpport:httpport"))?;
        if host.is_empty() {
            return Err(format!("--targets: '{item}' has no host"));
        }
        out.push(Target { host, tcp_port: num("--targets", t)?, http_port: num("--targets", h)? });
    }
    if out.is_empty() {
        return Err("--targets: empty list".into());
    }
    Ok(out)
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(it: I) -> Result<Parsed, String> {
    let mut a = Args::default();
    let mut it = it.into_iter();
    while let Some(arg) = it.next() {
        // accept both "--flag value" and "--flag=value"
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut inline = inline;
        let mut val = |it: &mut I::IntoIter| -> Result<String, String> {
            if let Some(v) = inline.take() {
                return Ok(v);
            }
            it.next().ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--help" | "-h" => return Ok(Parsed::Help),
            "--tcp" => a.tcp = num(&flag, &val(&mut it)?)?,
            "--sse" => a.sse = num(&flag, &val(&mut it)?)?,
            "--ws" => a.ws = num(&flag, &val(&mut it)?)?,
            "--senders" => a.senders = num(&flag, &val(&mut it)?)?,
            "--rate" => {
                a.rate = num(&flag, &val(&mut it)?)?;
                if !a.rate.is_finite() || a.rate <= 0.0 {
                    return Err("--rate must be > 0".into());
                }
            }
            "--duration" => a.duration = secs(&flag, &val(&mut it)?)?,
            "--drain" => a.drain = secs(&flag, &val(&mut it)?)?,
            "--typers" => a.typers = num(&flag, &val(&mut it)?)?,
            "--typing-every" => {
                a.typing_every = secs(&flag, &val(&mut it)?)?;
                if a.typing_every.is_zero() {
                    return Err("--typing-every must be > 0".into());
                }
            }
            "--setup-timeout" => a.setup_timeout = secs(&flag, &val(&mut it)?)?,
            "--room" => {
                a.room = val(&mut it)?;
                if !valid_name(&a.room) {
                    return Err("--room: 1-32 letters, digits, '_' or '-'".into());
                }
            }
            "--targets" => a.targets = parse_targets(&val(&mut it)?)?,
            "--server-pid" => {
                a.server_pids = val(&mut it)?
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|p| num::<u32>("--server-pid", p))
                    .collect::<Result<_, _>>()?;
            }
            "--json" => a.json = true,
            "--sender-http" => a.sender_http = true,
            "--sender-ws" => a.sender_ws = true,
            "--no-cleanup" => a.cleanup = false,
            "--max-loss" => a.max_loss = Some(num(&flag, &val(&mut it)?)?),
            "--connect-rate" => {
                a.connect_rate = num(&flag, &val(&mut it)?)?;
                if !a.connect_rate.is_finite() || a.connect_rate <= 0.0 {
                    return Err("--connect-rate must be > 0".into());
                }
            }
            "--nick-prefix" => {
                a.nick_prefix = val(&mut it)?;
                if !valid_name(&a.nick_prefix) || a.nick_prefix.len() > 16 {
                    return Err("--nick-prefix: 1-16 letters, digits, '_' or '-'".into());
                }
            }
            other => return Err(format!("unknown option '{other}' (see --help)")),
        }
        if inline.is_some() {
            return Err(format!("{flag} takes no value"));
        }
    }
    if a.tcp + a.sse + a.ws == 0 {
        return Err("need at least one receiver (--tcp, --sse or --ws)".into());
    }
    if a.sender_http && a.sender_ws {
        return Err("--sender-http and --sender-ws exclude each other".into());
    }
    if a.senders == 0 {
        return Err("--senders must be at least 1".into());
    }
    if a.typers > a.sse + a.ws {
        return Err("--typers cannot be more than the SSE and WebSocket receivers".into());
    }
    Ok(Parsed::Run(Box::new(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Result<Parsed, String> {
        parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults() {
        let Parsed::Run(a) = p(&[]).unwrap() else { panic!() };
        assert_eq!(*a, Args::default());
        assert_eq!(a.tcp, 100);
        assert_eq!(a.senders, 10);
        assert_eq!(a.targets[0].label(), "127.0.0.1:9001:3001");
    }

    #[test]
    fn all_flags() {
        let Parsed::Run(a) = p(&[
            "--tcp",
            "5",
            "--sse=7",
            "--senders",
            "3",
            "--rate",
            "250.5",
            "--duration",
            "1.5",
            "--room",
            "big",
            "--targets",
            "a:1:2, [::1]:3:4",
            "--server-pid",
            "10,20",
            "--json",
            "--max-loss",
            "4",
            "--connect-rate",
            "100",
            "--nick-prefix",
            "zz",
            "--sender-http",
            "--drain",
            "0",
            "--setup-timeout",
            "9",
            "--no-cleanup",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!((a.tcp, a.sse, a.senders), (5, 7, 3));
        assert_eq!(a.rate, 250.5);
        assert_eq!(a.duration, Duration::from_millis(1500));
        assert_eq!(a.room, "big");
        assert_eq!(
            a.targets,
            vec![
                Target { host: "a".into(), tcp_port: 1, http_port: 2 },
                Target { host: "::1".into(), tcp_port: 3, http_port: 4 }
            ]
        );
        assert_eq!(a.server_pids, vec![10, 20]);
        assert!(a.json && a.sender_http && !a.cleanup);
        assert_eq!(a.max_loss, Some(4));
        assert_eq!(a.connect_rate, 100.0);
        assert_eq!(a.nick_prefix, "zz");
        assert_eq!(a.drain, Duration::ZERO);
        assert_eq!(a.setup_timeout, Duration::from_secs(9));
    }

    #[test]
    fn errors_and_help() {
        assert_eq!(p(&["--help"]).unwrap(), Parsed::Help);
        assert!(p(&["--tcp"]).is_err());
        assert!(p(&["--tcp", "x"]).is_err());
        assert!(p(&["--bogus"]).is_err());
        assert!(p(&["--rate", "0"]).is_err());
        assert!(p(&["--targets", "host:1"]).is_err());
        assert!(p(&["--targets", "host:1:99999"]).is_err());
        assert!(p(&["--room", "bad room"]).is_err());
        assert!(p(&["--json=1"]).is_err());
        assert!(p(&["--tcp", "0"]).is_err());
        assert!(p(&["--senders", "0"]).is_err());
        assert!(p(&["--duration", "-1"]).is_err());
        assert!(p(&["--sse", "2", "--typers", "3"]).is_err());
        assert!(p(&["--sse", "2", "--typers", "1", "--typing-every", "0"]).is_err());
        let Parsed::Run(a) = p(&["--sse", "2", "--ws", "1", "--typers", "3", "--typing-every", "0.5"]).unwrap() else { panic!() };
        assert_eq!((a.typers, a.typing_every), (3, Duration::from_millis(500)));
    }
}
