//! A deliberately small HTTP/1.1 client over `std::net::TcpStream`, so that the tests control
//! every byte: the `Host` header (the frontend routes by it), headers a client might forge,
//! bodies written and read piece by piece, and when a connection is reused or closed.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any read may block before the test gives up on the answer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A whole response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// From sending the request to the end of the body.
    pub elapsed: Duration,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {self}"))
    }

    /// Asserts status 200 and returns the body as JSON.
    #[track_caller]
    pub fn ok_json(&self) -> Value {
        assert_eq!(self.status, 200, "expected 200: {self}");
        self.json()
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = self.text();
        let body = if body.len() > 2000 { format!("{}…", &body[..2000]) } else { body };
        write!(f, "HTTP {} after {:?} {:?} {body}", self.status, self.elapsed, self.headers)
    }
}

/// A response's status line and headers.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One client connection to the frontend, naming one host.
pub struct Conn {
    reader: BufReader<TcpStream>,
    host: String,
}

/// How the rest of a response body is framed.
enum Framing {
    Length(u64),
    /// Bytes left in the current chunk; `None` before the next chunk's size line.
    Chunked(Option<u64>),
    UntilClose,
    Done,
}

/// A response body being read.
pub struct Body<'a> {
    conn: &'a mut Conn,
    framing: Framing,
}

impl Conn {
    pub fn open(addr: SocketAddr, host: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Conn { reader: BufReader::with_capacity(64 * 1024, stream), host: host.to_string() })
    }

    pub fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.reader.get_ref().set_read_timeout(Some(timeout))
    }

    /// Writes a request head. `length` is the body's Content-Length, if it has one.
    pub fn send_head(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        length: Option<u64>,
    ) -> io::Result<()> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(n) = length {
            head.push_str(&format!("Content-Length: {n}\r\n"));
        }
        head.push_str("\r\n");
        self.reader.get_mut().write_all(head.as_bytes())
    }

    pub fn write_body(&mut self, data: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(data)
    }

    pub fn read_head(&mut self) -> io::Result<Head> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed before a response"));
        }
        let status = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                break;
            }
            let (k, v) = l
                .split_once(':')
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad header {l:?}")))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        Ok(Head { status, headers })
    }

    /// The body of a response to a request with method `method`.
    pub fn body(&mut self, method: &str, head: &Head) -> Body<'_> {
        let framing = if method == "HEAD" || head.status == 204 || head.status == 304 {
            Framing::Done
        } else if head.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            Framing::Chunked(None)
        } else if let Some(n) = head.header("content-length").and_then(|v| v.parse().ok()) {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        Body { conn: self, framing }
    }

    /// Sends a whole request and reads the whole response; the connection stays usable.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Reply> {
        let started = Instant::now();
        let length = (!body.is_empty() || method == "POST" || method == "PUT").then_some(body.len() as u64);
        self.send_head(method, path, headers, length)?;
        self.write_body(body)?;
        let head = self.read_head()?;
        let mut data = Vec::new();
        let mut reader = self.body(method, &head);
        while let Some(piece) = reader.next_piece()? {
            data.extend_from_slice(&piece);
        }
        Ok(Reply { status: head.status, headers: head.headers, body: data, elapsed: started.elapsed() })
    }
}

impl Body<'_> {
    /// The next piece of the body as it arrives, `None` at its end.
    pub fn next_piece(&mut self) -> io::Result<Option<Vec<u8>>> {
        const PIECE: u64 = 64 * 1024;
        let reader = &mut self.conn.reader;
        loop {
            match self.framing {
                Framing::Done => return Ok(None),
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Ok(None);
                }
                Framing::Length(left) => {
                    let mut buf = vec![0; left.min(PIECE) as usize];
                    let n = reader.read(&mut buf)?;
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{left} body bytes missing")));
                    }
                    buf.truncate(n);
                    self.framing = Framing::Length(left - n as u64);
                    return Ok(Some(buf));
                }
                Framing::UntilClose => {
                    let mut buf = vec![0; PIECE as usize];
                    let n = reader.read(&mut buf)?;
                    if n == 0 {
                        self.framing = Framing::Done;
                        return Ok(None);
                    }
                    buf.truncate(n);
                    return Ok(Some(buf));
                }
                Framing::Chunked(None) => {
                    let mut line = String::new();
                    reader.read_line(&mut line)?;
                    let size = line.trim_end().split(';').next().unwrap_or_default();
                    let size = u64::from_str_radix(size, 16).map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size line {line:?}"))
                    })?;
                    if size == 0 {
                        // Trailers, then the empty line.
                        loop {
                            line.clear();
                            if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                                break;
                            }
                        }
                        self.framing = Framing::Done;
                        return Ok(None);
                    }
                    self.framing = Framing::Chunked(Some(size));
                }
                Framing::Chunked(Some(0)) => {
                    let mut crlf = String::new();
                    reader.read_line(&mut crlf)?;
                    self.framing = Framing::Chunked(None);
                }
                Framing::Chunked(Some(left)) => {
                    let mut buf = vec![0; left.min(PIECE) as usize];
                    let n = reader.read(&mut buf)?;
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a chunk ended early"));
                    }
                    buf.truncate(n);
                    self.framing = Framing::Chunked(Some(left - n as u64));
                    return Ok(Some(buf));
                }
            }
        }
    }
}

/// One request on a fresh connection that is closed afterwards.
pub fn try_request(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Reply> {
    let started = Instant::now();
    let mut conn = Conn::open(addr, host)?;
    let mut all = vec![("Connection", "close")];
    all.extend_from_slice(headers);
    let mut reply = conn.request(method, path, &all, body)?;
    reply.elapsed = started.elapsed();
    Ok(reply)
}

/// `GET path` with `Host: host` on a fresh connection.
#[track_caller]
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    try_request(addr, host, "GET", path, &[], &[]).unwrap_or_else(|e| panic!("GET {path} (Host: {host}): {e}"))
}

/// `POST path` with a JSON body on a fresh connection.
#[track_caller]
pub fn post_json(addr: SocketAddr, host: &str, path: &str, body: &Value) -> Reply {
    let bytes = serde_json::to_vec(body).expect("JSON");
    try_request(addr, host, "POST", path, &[("Content-Type", "application/json")], &bytes)
        .unwrap_or_else(|e| panic!("POST {path} (Host: {host}): {e}"))
}

/// CRC-32 (IEEE, as zlib computes it), continued from `crc`.
pub fn crc32(crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[[u32; 256]; 8]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [[0u32; 256]; 8];
        for i in 0..256u32 {
            let mut c = i;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            t[0][i as usize] = c;
        }
        for i in 0..256 {
            for k in 1..8 {
                let prev = t[k - 1][i];
                t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            }
        }
        t
    });
    let mut c = !crc;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let lo = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) ^ c;
        let hi = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
        c = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for b in words.remainder() {
        c = t[0][((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[test]
fn crc32_matches_zlib() {
    assert_eq!(crc32(0, b""), 0);
    assert_eq!(crc32(0, b"123456789"), 0xCBF4_3926);
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    let whole = crc32(0, &data);
    let (a, b) = data.split_at(333);
    assert_eq!(crc32(crc32(0, a), b), whole);
}
