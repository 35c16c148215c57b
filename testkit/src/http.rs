//! The little HTTP/1.1 the tests' own misbehaving servers need (a registry that answers
//! wrongly, or drips its bytes): what a real server library would hide from the test.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads one request head, up to and including the blank line, and returns it as text;
/// `None` when the client closes (or errs) first. Byte by byte, so nothing of a pipelined
/// next request is consumed (the tests' servers send no bodies to read).
pub async fn read_request_head(sock: &mut (impl AsyncRead + Unpin)) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match sock.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}
