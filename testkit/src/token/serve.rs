//! The token endpoint over HTTP/1.1 on blocking sockets: one thread per connection, the
//! request head and body read with limits, and the issuing policy (`handle`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::{Access, SERVICE, Shared, TOKEN_LIFETIME_SECS, TokenRequest, now_secs, rfc3339};

/// How long a connection may stay silent before the server drops it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request head (request line and headers) or body the server reads.
const MAX_REQUEST: usize = 64 * 1024;

pub(super) fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(shared);
        // One thread per connection: a client that connects and says nothing holds only its
        // own thread, for at most IO_TIMEOUT.
        let _ = std::thread::Builder::new()
            .name("token-server-conn".to_owned())
            .spawn(move || {
                let _ = serve_connection(stream, &shared);
            });
    }
}

/// A parsed request: what the handler needs of it.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Serves one request on `stream` and closes it (`Connection: close`).
fn serve_connection(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let (status, body, extra_headers) = match read_request(&mut reader)? {
        Some(request) => handle(&request, shared),
        None => (
            400,
            error_body("UNSUPPORTED", "malformed request"),
            Vec::new(),
        ),
    };
    let mut out = stream;
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra_headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    out.write_all(response.as_bytes())?;
    out.write_all(body.as_bytes())?;
    out.flush()?;
    let _ = out.shutdown(Shutdown::Write);
    // Let the client read the response before the socket goes away: drain what it still
    // sends until it closes (bounded by the read timeout).
    let mut sink = [0u8; 1024];
    while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

/// Reads a request head and its `Content-Length` body. `Ok(None)` if it is malformed or
/// too large.
fn read_request(reader: &mut impl BufRead) -> std::io::Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take((MAX_REQUEST + 1 - head.len().min(MAX_REQUEST)) as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 || head.len() + line.len() > MAX_REQUEST {
            return Ok(None);
        }
        let blank = line == b"\r\n" || line == b"\n";
        head.extend_from_slice(&line);
        if blank {
            break;
        }
    }
    let Ok(head) = String::from_utf8(head) else {
        return Ok(None);
    };
    let mut lines = head.lines();
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target)) = (request_line.next(), request_line.next()) else {
        return Ok(None);
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut request = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body: Vec::new(),
    };
    if let Some(len) = request.header("content-length") {
        let Ok(len) = len.parse::<usize>() else {
            return Ok(None);
        };
        if len > MAX_REQUEST {
            return Ok(None);
        }
        request.body = vec![0; len];
        reader.read_exact(&mut request.body)?;
    }
    Ok(Some(request))
}

/// Who a token request authenticates as.
enum Caller {
    Anonymous,
    User(String),
    /// Wrong credentials or an unknown refresh token.
    Refused,
}

/// Answers `request`: (status, JSON body, extra headers). Records it.
fn handle(request: &Request, shared: &Shared) -> (u16, String, Vec<(String, String)>) {
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    let mut params = parse_form(query);
    let is_post = request.method == "POST";
    if is_post {
        params.extend(parse_form(&String::from_utf8_lossy(&request.body)));
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let service = param("service");
    let scopes: Vec<String> = params
        .iter()
        .filter(|(n, _)| n == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let grant_type = if is_post { param("grant_type") } else { None };

    let basic = request
        .header("authorization")
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b64| STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .map(|s| match s.split_once(':') {
            Some((u, p)) => (u.to_owned(), p.to_owned()),
            None => (s, String::new()),
        });
    let check = |(user, password): (String, String)| {
        if shared
            .users
            .iter()
            .any(|(u, p)| *u == user && *p == password)
        {
            (Some(user.clone()), Caller::User(user))
        } else {
            (Some(user), Caller::Refused)
        }
    };
    // (the user name presented, who that is), or an error answer.
    let caller = match (is_post, grant_type.as_deref()) {
        (false, _) => Ok(basic.map_or((None, Caller::Anonymous), check)),
        (true, Some("password")) => {
            let form = param("username").map(|u| (u, param("password").unwrap_or_default()));
            Ok(form.or(basic).map_or((None, Caller::Refused), check))
        }
        (true, Some("refresh_token")) => {
            let known = param("refresh_token")
                .and_then(|t| shared.refresh_tokens.lock().unwrap().get(&t).cloned());
            Ok(match known {
                Some(user) => (Some(user.clone()), Caller::User(user)),
                None => (None, Caller::Refused),
            })
        }
        (true, _) => Err((
            400,
            json!({"error": "unsupported_grant_type"}).to_string(),
            Vec::new(),
        )),
    };
    let wants_refresh_token = param("access_type").as_deref() == Some("offline")
        || param("offline_token").as_deref() == Some("true");

    let mut record = TokenRequest {
        method: request.method.clone(),
        target: request.target.clone(),
        user: caller.as_ref().ok().and_then(|(u, _)| u.clone()),
        grant_type: grant_type.clone(),
        service: service.clone(),
        scopes: scopes.clone(),
        status: 0,
        user_agent: request.header("user-agent").unwrap_or_default().to_owned(),
        granted: Vec::new(),
    };

    let result = if path != "/token" {
        (404, error_body("NOT_FOUND", "no such endpoint"), Vec::new())
    } else if request.method != "GET" && !is_post {
        (
            405,
            error_body("UNSUPPORTED", "method not allowed"),
            vec![("Allow".to_owned(), "GET, POST".to_owned())],
        )
    } else {
        match caller {
            Err(answer) => answer,
            Ok((_, Caller::Refused)) => (
                401,
                error_body("UNAUTHORIZED", "authentication required"),
                vec![(
                    "WWW-Authenticate".to_owned(),
                    "Basic realm=\"rootstock-test-token\"".to_owned(),
                )],
            ),
            Ok((_, caller)) => {
                let (subject, granted) = match caller {
                    // A known user gets what it asked for.
                    Caller::User(user) => (
                        user,
                        scopes
                            .iter()
                            .filter_map(|s| Access::parse_scope(s))
                            .collect(),
                    ),
                    // Anonymous: a valid token that grants nothing.
                    _ => (String::new(), Vec::new()),
                };
                let now = now_secs();
                let audience = service.as_deref().unwrap_or(SERVICE);
                let token = shared.sign(&subject, audience, &granted, now);
                record.granted = granted;
                let mut body = json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": TOKEN_LIFETIME_SECS,
                    "issued_at": rfc3339(now),
                });
                if wants_refresh_token && !subject.is_empty() {
                    body["refresh_token"] = Value::from(shared.refresh_token(&subject));
                }
                (200, body.to_string(), Vec::new())
            }
        }
    };
    record.status = result.0;
    shared.requests.lock().unwrap().push(record);
    result
}

fn error_body(code: &str, message: &str) -> String {
    json!({"errors": [{"code": code, "message": message}]}).to_string()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Unknown",
    }
}

/// `a=1&b=x+y%20z` → `[("a","1"), ("b","x y z")]`.
fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(n), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_scopes_parse() {
        assert_eq!(
            parse_form("service=reg&scope=repository%3Afoo%2Fbar%3Apull%2Cpush&scope=a+b&x=%zz"),
            vec![
                ("service".into(), "reg".into()),
                ("scope".into(), "repository:foo/bar:pull,push".into()),
                ("scope".into(), "a b".into()),
                ("x".into(), "%zz".into()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(
            Access::parse_scope("repository:127.0.0.1:5000/foo:pull,push"),
            Some(Access {
                resource_type: "repository".into(),
                name: "127.0.0.1:5000/foo".into(),
                actions: vec!["pull".into(), "push".into()],
            })
        );
        assert_eq!(Access::parse_scope("registry:catalog"), None);
    }
}
