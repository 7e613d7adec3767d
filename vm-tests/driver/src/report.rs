//! The results: one line per event, on the results port (the guest's second
//! serial port, which the run script reads back) and on stderr (the console).
//!
//! Lines, parsed by vm-tests/lib/boot.sh:
//! `VMTEST BEGIN kernel=<release> tests=<a,b>`, `VMTEST START <name>`,
//! `VMTEST PASS <name> <secs>s`, `VMTEST FAIL <name> <secs>s: <why>`,
//! `VMTEST SKIP <name>: <why>`, `VMTEST NOTE <name>: <text>` and
//! `VMTEST END passed=N failed=N skipped=N`.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

pub struct Report {
    out: Mutex<Option<File>>,
}

impl Report {
    /// Reports to `path` (e.g. /dev/ttyS1) as well as stderr; without a path,
    /// or when it cannot be opened, to stderr alone.
    pub fn open(path: Option<&str>) -> Report {
        let file = path.and_then(|p| match std::fs::OpenOptions::new().write(true).open(p) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("vm-driver: cannot open results port {p}: {e}; results on stderr only");
                None
            }
        });
        Report {
            out: Mutex::new(file),
        }
    }

    /// One line; newlines inside become spaces so that a line stays a record.
    pub fn line(&self, text: &str) {
        let text = text.replace(['\n', '\r'], " ");
        eprintln!("{text}");
        if let Ok(mut g) = self.out.lock() {
            if let Some(f) = g.as_mut() {
                let _ = writeln!(f, "{text}");
                let _ = f.flush();
            }
        }
    }
}
