//! Reading inputs and writing outputs, with `-` for standard input and output.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use crate::outcome::Failure;

/// Reads all of `path` (`-` for standard input), refusing inputs larger than `limit` bytes so
/// that a wrong file cannot exhaust memory.
pub fn read_input(path: &Path, limit: u64) -> Result<Vec<u8>, Failure> {
    let shown = path.display();
    let mut data = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(limit.saturating_add(1))
            .read_to_end(&mut data)
    } else {
        File::open(path).and_then(|f| f.take(limit.saturating_add(1)).read_to_end(&mut data))
    };
    read.map_err(|e| Failure::unreadable(format!("cannot read {shown}: {e}")))?;
    if data.len() as u64 > limit {
        return Err(Failure::unreadable(format!(
            "{shown} is larger than {limit} bytes, more than this command reads"
        )));
    }
    Ok(data)
}

/// Writes `data` to `path` (`-` for standard output).
pub fn write_output(path: &Path, data: &[u8]) -> Result<(), Failure> {
    let shown = path.display();
    let written = if path == Path::new("-") {
        let mut out = std::io::stdout().lock();
        out.write_all(data).and_then(|()| out.flush())
    } else {
        std::fs::write(path, data)
    };
    written.map_err(|e| Failure::unreadable(format!("cannot write {shown}: {e}")))
}
