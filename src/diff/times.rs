//! Layer times: what the tar writer does with each entry's mtime, and the same rule applied to a
//! layer tar after the fact, so a build's layers can be given another timestamp mode without
//! running a step again.
//!
//! A layer written with [`Times::Keep`] and passed through [`TimesWriter`] is byte for byte the
//! layer the writer makes in that mode directly: only the ustar mtime field of each entry header
//! (and its checksum) differs between modes, and both paths set it with the same code.

use std::io::{self, Write};

/// What a build does with the times in its layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Times {
    /// Each entry's own mtime.
    #[default]
    Keep,
    /// SOURCE_DATE_EPOCH: mtimes newer than this are set to it, older ones are kept.
    Clamp(i64),
    /// `--timestamp`: every entry's mtime is this.
    Set(i64),
}

impl Times {
    /// The mtime an entry with mtime `m` gets in a layer.
    pub fn apply(self, m: i64) -> i64 {
        match self {
            Times::Keep => m,
            Times::Clamp(s) => m.min(s),
            Times::Set(s) => s,
        }
    }

    /// The time an image config or history entry made at `t` says.
    pub fn stamp(self, t: i64) -> i64 {
        match self {
            Times::Keep => t,
            Times::Clamp(s) | Times::Set(s) => s,
        }
    }

    /// How the store names the mode (None for [`Times::Keep`], which changes nothing).
    pub fn key(self) -> Option<String> {
        match self {
            Times::Keep => None,
            Times::Clamp(s) => Some(format!("clamp:{s}")),
            Times::Set(s) => Some(format!("set:{s}")),
        }
    }
}

/// A `Write` that passes a layer tar through with every entry's mtime rewritten by `times`.
/// PAX and GNU long-name headers pass unchanged; a PAX `mtime` record (which would override the
/// rewritten field) is refused, as no layer kiln writes has one.
pub struct TimesWriter<W: Write> {
    inner: W,
    times: Times,
    block: Vec<u8>,
    /// Bytes of the current entry's data and padding still to pass through.
    data_left: u64,
    /// The current PAX header's records, collected to look for `mtime`.
    pax: Option<Vec<u8>>,
}

impl<W: Write> TimesWriter<W> {
    pub fn new(inner: W, times: Times) -> Self {
        TimesWriter {
            inner,
            times,
            block: Vec::with_capacity(512),
            data_left: 0,
            pax: None,
        }
    }

    /// The inner writer, once the whole tar has passed (a partial header is an error).
    pub fn finish(self) -> io::Result<W> {
        if !self.block.is_empty() || self.data_left > 0 {
            return Err(invalid("the layer tar ends inside an entry"));
        }
        Ok(self.inner)
    }

    fn header(&mut self) -> io::Result<()> {
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(&self.block);
        self.block.clear();
        if h.as_bytes().iter().all(|&b| b == 0) {
            return self.inner.write_all(h.as_bytes());
        }
        let size = h
            .entry_size()
            .map_err(|e| invalid(&format!("a header's size does not parse: {e}")))?;
        self.data_left = size.div_ceil(512) * 512;
        match h.entry_type().as_byte() {
            b'x' | b'g' => self.pax = Some(Vec::new()),
            b'L' | b'K' => {}
            _ => {
                let m = h
                    .mtime()
                    .map_err(|e| invalid(&format!("a header's mtime does not parse: {e}")))?;
                h.set_mtime(self.times.apply(m as i64).max(0) as u64);
                h.set_cksum();
            }
        }
        self.inner.write_all(h.as_bytes())?;
        if self.data_left == 0 {
            self.end_data()?;
        }
        Ok(())
    }

    fn end_data(&mut self) -> io::Result<()> {
        if let Some(p) = self.pax.take() {
            if p.windows(7).any(|w| w == b" mtime=") {
                return Err(invalid(
                    "an entry's time is in a PAX mtime record, which kiln does not rewrite",
                ));
            }
        }
        Ok(())
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

impl<W: Write> Write for TimesWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut i = 0;
        while i < buf.len() {
            if self.data_left > 0 {
                let n = (buf.len() - i).min(self.data_left as usize);
                let part = &buf[i..i + n];
                if let Some(p) = &mut self.pax {
                    p.extend_from_slice(part);
                }
                self.inner.write_all(part)?;
                self.data_left -= n as u64;
                i += n;
                if self.data_left == 0 {
                    self.end_data()?;
                }
                continue;
            }
            let n = (buf.len() - i).min(512 - self.block.len());
            self.block.extend_from_slice(&buf[i..i + n]);
            i += n;
            if self.block.len() == 512 {
                self.header()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use crate::diff::TarOptions;
    use crate::rootfs::Root;
    use std::fs;

    /// A tree with every kind of entry the writer makes: files old and new, a directory, a
    /// symlink, a hard link, a long name (PAX), an xattr (PAX), and a whiteout among the entries.
    fn times_tree() -> (tempfile::TempDir, Vec<crate::diff::TarEntry>) {
        use crate::diff::{EntrySource, TarEntry};
        let src = tempfile::tempdir().unwrap();
        let p = src.path();
        fs::create_dir_all(p.join("d")).unwrap();
        fs::write(p.join("d/old"), b"old").unwrap();
        fs::write(p.join("new"), vec![7u8; 5000]).unwrap();
        fs::hard_link(p.join("new"), p.join("new-link")).unwrap();
        std::os::unix::fs::symlink("d/old", p.join("sym")).unwrap();
        let long = "l".repeat(150);
        fs::write(p.join(&long), b"long").unwrap();
        let f = fs::File::open(p.join("new")).unwrap();
        // tmpfs without user xattrs: the tree just has none.
        let _ = crate::sys::fsetxattr(std::os::fd::AsFd::as_fd(&f), "user.k".as_ref(), b"v");
        let root = Root::open(p).unwrap();
        crate::sys::lutimesat(root.fd(), "d/old".as_ref(), 100, 0).unwrap();
        crate::sys::lutimesat(root.fd(), "sym".as_ref(), 200, 0).unwrap();
        crate::sys::lutimesat(root.fd(), "new".as_ref(), 5_000_000, 0).unwrap();
        let mut entries = Vec::new();
        for n in ["d", "d/old", long.as_str(), "new", "new-link", "sym"] {
            entries.push(TarEntry {
                name: n.as_bytes().to_vec(),
                source: EntrySource::Host(p.join(n)),
            });
        }
        entries.push(TarEntry {
            name: b"d/.wh.gone".to_vec(),
            source: EntrySource::Whiteout,
        });
        crate::diff::tar::sort_entries(&mut entries);
        (src, entries)
    }

    #[test]
    fn rewriting_a_kept_layers_times_gives_the_layer_written_in_that_mode() {
        use crate::diff::{write_entries, Times, TimesWriter};
        let (_src, entries) = times_tree();
        let keep = write_entries(&entries, Vec::new(), &TarOptions::default()).unwrap();
        for times in [Times::Clamp(1000), Times::Set(1_700_000_000), Times::Set(0)] {
            let direct = write_entries(&entries, Vec::new(), &TarOptions { times }).unwrap();
            let mut w = TimesWriter::new(Vec::new(), times);
            // In odd pieces, so headers arrive split.
            for part in keep.chunks(333) {
                std::io::Write::write_all(&mut w, part).unwrap();
            }
            assert!(direct == w.finish().unwrap(), "{times:?}");
            let mut a = tar::Archive::new(&direct[..]);
            for e in a.entries().unwrap() {
                let e = e.unwrap();
                let m = e.header().mtime().unwrap() as i64;
                match times {
                    Times::Set(t) => assert_eq!(m, t, "{:?}", e.path()),
                    Times::Clamp(s) => assert!(m <= s),
                    Times::Keep => {}
                }
            }
        }
        // Set mode: the files' own times no longer matter.
        let (_src2, other) = times_tree();
        assert_eq!(
            write_entries(
                &other,
                Vec::new(),
                &TarOptions {
                    times: Times::Set(9)
                }
            )
            .unwrap(),
            write_entries(
                &entries,
                Vec::new(),
                &TarOptions {
                    times: Times::Set(9)
                }
            )
            .unwrap()
        );
        // A stream cut inside an entry is refused, not passed on short.
        let mut w = TimesWriter::new(Vec::new(), Times::Set(1));
        std::io::Write::write_all(&mut w, &keep[..700]).unwrap();
        assert!(w.finish().is_err());
    }
}
