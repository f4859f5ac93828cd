//! A deliberately small HTTP/1.1 client: one keep-alive connection, one
//! request at a time, `content-length` bodies only (all the relay sends).
//! The load generator shares two cores with the relay it measures, so its
//! own cost per request must stay small.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Conn {
    addr: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Conn {
    pub fn new(addr: &str) -> Conn {
        Conn {
            addr: addr.to_owned(),
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Open the connection now (a request opens it when needed).
    pub async fn connect(&mut self) -> io::Result<()> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        Ok(())
    }

    /// Send one request and read its reply. A failed connection is dropped
    /// and reopened by the next request.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> io::Result<Reply> {
        let result = self
            .round_trip(method, path, token, content_type, body)
            .await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn round_trip(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> io::Result<Reply> {
        self.connect().await?;
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::other("no connection"))?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.addr);
        if let Some(t) = token {
            head.push_str("authorization: Bearer ");
            head.push_str(t);
            head.push_str("\r\n");
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!(
                "content-type: {content_type}\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        stream.write_all(&out).await?;

        self.buf.clear();
        let (status, body_start, length) = loop {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(at)) => {
                    let length = response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .ok_or_else(|| io::Error::other("reply without content-length"))?;
                    break (response.code.unwrap_or(0), at, length);
                }
                Ok(httparse::Status::Partial) => continue,
                Err(e) => return Err(io::Error::other(format!("bad reply: {e}"))),
            }
        };
        let mut body = self.buf.split_off(body_start);
        if body.len() < length {
            let have = body.len();
            body.resize(length, 0);
            stream.read_exact(&mut body[have..]).await?;
        }
        body.truncate(length);
        Ok(Reply { status, body })
    }
}
