//! Following a container's log as it grows: each read returns the lines written since the last
//! (a line still being written waits for its end).

use super::{dir, LogLine};
use kiln_store::Store;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

pub struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl LogTail {
    /// From the log's start.
    pub fn new(store: &Store, id: &str) -> LogTail {
        LogTail {
            path: dir(store, id).join("log.json"),
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// The lines written since the last read (none if the log is not there yet).
    pub fn read(&mut self) -> io::Result<Vec<LogLine>> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        self.offset += f.read_to_end(&mut buf)? as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(Vec::new());
        };
        let whole: Vec<u8> = self.partial.drain(..=end).collect();
        Ok(whole
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect())
    }
}
