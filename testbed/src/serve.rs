//! A one-file HTTP/1.0 server on 127.0.0.1, where a QEMU guest finds it at
//! 10.0.2.2: every request, whatever its path, gets the whole file, from
//! memory or from disk, optionally throttled so that a download lasts long
//! enough to be interrupted. No ranges, redirects or errors on purpose: the
//! agent's own tests (`agent/tests/support`) have a server for those.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The write size of an unthrottled download.
const CHUNK: usize = 256 << 10;

/// A throttled download sends a tenth of its rate at every tick.
const TICK: Duration = Duration::from_millis(100);

/// What a [`FileServer`] serves.
#[derive(Debug)]
enum Content {
    Bytes(Vec<u8>),
    /// Opened at each request, so its length is the file's at that time.
    File(PathBuf),
}

/// A one-file HTTP server: [`FileServer::bytes`] or [`FileServer::file`],
/// then [`FileServer::start`].
#[derive(Debug)]
pub struct FileServer {
    content: Content,
    rate: Option<usize>,
}

impl FileServer {
    /// Serves `data`.
    pub fn bytes(data: Vec<u8>) -> FileServer {
        FileServer { content: Content::Bytes(data), rate: None }
    }

    /// Serves the file at `path`, read at each request (an image of
    /// gigabytes need not be held in memory).
    pub fn file(path: impl Into<PathBuf>) -> FileServer {
        FileServer { content: Content::File(path.into()), rate: None }
    }

    /// Sends at most `bytes_per_second`, a tenth every 100 ms.
    pub fn throttled(mut self, bytes_per_second: usize) -> FileServer {
        self.rate = Some(bytes_per_second);
        self
    }

    /// Listens on 127.0.0.1 (a free port, returned) and answers each
    /// connection on a thread of its own, for as long as the process lives.
    pub fn start(self) -> io::Result<u16> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let server = Arc::new(self);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let server = server.clone();
                match conn {
                    Ok(c) => {
                        std::thread::spawn(move || {
                            if let Err(e) = server.respond(c) {
                                // A guest that stops reading (a cancelled
                                // deployment, a reboot) is no news.
                                if !matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) {
                                    eprintln!("byoi-testbed: file server on port {port}: {e}");
                                }
                            }
                        });
                    }
                    Err(e) => eprintln!("byoi-testbed: file server on port {port}: accepting: {e}"),
                }
            }
        });
        Ok(port)
    }

    fn respond(&self, mut c: TcpStream) -> io::Result<()> {
        // The request is read, not parsed: every path gets the file.
        let mut request = [0u8; 4096];
        let _ = c.read(&mut request)?;
        let (len, mut body): (u64, Box<dyn Read + '_>) = match &self.content {
            Content::Bytes(data) => (data.len() as u64, Box::new(&data[..])),
            Content::File(path) => {
                let opened = std::fs::File::open(path).and_then(|f| Ok((f.metadata()?.len(), f)));
                match opened {
                    Ok((len, f)) => (len, Box::new(f)),
                    Err(e) => {
                        write!(c, "HTTP/1.0 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")?;
                        return Err(io::Error::new(e.kind(), format!("opening {}: {e}", path.display())));
                    }
                }
            }
        };
        write!(c, "HTTP/1.0 200 OK\r\nContent-Length: {len}\r\n\r\n")?;
        let mut buf = vec![0u8; self.rate.map_or(CHUNK, |r| (r / 10).max(1))];
        loop {
            let n = fill(&mut body, &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            c.write_all(&buf[..n])?;
            if self.rate.is_some() {
                std::thread::sleep(TICK);
            }
        }
    }
}

/// Reads until `buf` is full or the end; returns the bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn get(port: u16) -> (String, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET /any/path HTTP/1.0\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (String::from_utf8_lossy(&raw[..split]).into_owned(), raw[split + 4..].to_vec())
    }

    #[test]
    fn serves_bytes_and_files() {
        let data: Vec<u8> = (0..CHUNK * 2 + 7).map(|i| (i % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, &data).unwrap();
        for server in [FileServer::bytes(data.clone()), FileServer::file(&path)] {
            let port = server.start().unwrap();
            for _ in 0..2 {
                let (head, body) = get(port);
                assert_eq!(head, format!("HTTP/1.0 200 OK\r\nContent-Length: {}", data.len()));
                assert!(body == data);
            }
        }
    }

    #[test]
    fn a_missing_file_is_a_500() {
        let dir = tempfile::tempdir().unwrap();
        let port = FileServer::file(dir.path().join("nothing")).start().unwrap();
        let (head, body) = get(port);
        assert!(head.starts_with("HTTP/1.0 500 "), "{head}");
        assert!(body.is_empty());
    }

    #[test]
    fn throttled() {
        // 3 ticks of 1000 bytes: ≥ 200 ms between the first and the last.
        let port = FileServer::bytes(vec![7; 3000]).throttled(10_000).start().unwrap();
        let start = Instant::now();
        let (_, body) = get(port);
        assert_eq!(body, vec![7; 3000]);
        assert!(start.elapsed() >= 2 * TICK, "{:?}", start.elapsed());
    }
}
