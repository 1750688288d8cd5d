//! `Slice`: a window `[start, start + len)` of a `Read + Write + Seek`,
//! itself `Read + Write + Seek`, so a filesystem library can work on one
//! partition of a disk.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// A partition-sized window onto a disk.
#[derive(Debug)]
pub struct Slice<D> {
    inner: D,
    start: u64,
    len: u64,
    pos: u64,
}

impl<D: Seek> Slice<D> {
    /// The window `[start, start + len)` of `inner`.
    pub fn new(inner: D, start: u64, len: u64) -> Self {
        Slice { inner, start, len, pos: 0 }
    }
}

impl<D: Read + Seek> Read for Slice<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        // Fill the buffer: callers (fatfs) may not expect short reads.
        let mut done = 0;
        while done < n {
            match self.inner.read(&mut buf[done..n])? {
                0 => break,
                k => done += k,
            }
        }
        self.pos += done as u64;
        Ok(done)
    }
}

impl<D: Write + Seek> Write for Slice<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() && self.pos >= self.len {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write past the end of the partition"));
        }
        let n = (buf.len() as u64).min(self.len - self.pos) as usize;
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        self.inner.write_all(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<D> Seek for Slice<D> {
    fn seek(&mut self, from: SeekFrom) -> io::Result<u64> {
        let new = match from {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn stays_inside_its_window() {
        let mut disk = vec![0u8; 100];
        let mut s = Slice::new(Cursor::new(&mut disk), 10, 20);
        s.write_all(&[1; 20]).unwrap();
        assert!(s.write_all(&[2]).is_err());
        assert_eq!(s.seek(SeekFrom::End(-5)).unwrap(), 15);
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        assert_eq!(buf, [1; 5]);
        assert_eq!(disk[9..31], [[0].as_slice(), &[1; 20], &[0]].concat()[..]);
    }
}
