//! `--qlog-dir DIR`: one qlog trace file per QUIC connection, named after
//! the side, a connection number and the peer, for a qlog viewer (qvis).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use kwik_tokio::{QlogSink, QlogTarget};

use crate::Fail;

/// A sink writing `DIR/<side>-<n>-<peer>.sqlog`; creates DIR if missing.
pub fn sink(dir: &Path) -> Result<QlogSink, Fail> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Fail(format!(
            "cannot create qlog directory {}: {e}",
            dir.display()
        ))
    })?;
    let dir: PathBuf = dir.to_path_buf();
    Ok(QlogSink::new(move |target: &QlogTarget| {
        let side = match target.side {
            kwik_tokio::Side::Client => "client",
            kwik_tokio::Side::Server => "server",
        };
        let peer: String = target
            .remote
            .to_string()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = dir.join(format!("{side}-{}-{peer}.sqlog", target.connection));
        match File::create(&path) {
            Ok(file) => {
                Some(Box::new(LineFlushed(BufWriter::new(file))) as Box<dyn Write + Send + Sync>)
            }
            Err(e) => {
                eprintln!("kwik: no qlog for {}: {e}", path.display());
                None
            }
        }
    }))
}

/// Flushes at every record separator, so a trace is readable while the
/// connection runs and complete if the process is killed.
struct LineFlushed(BufWriter<File>);

impl Write for LineFlushed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        if buf[..n].contains(&b'\n') {
            self.0.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
