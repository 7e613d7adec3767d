//! Which binary runs the helpers: `sycri-engine` built from the same sources
//! as this server (checked by its fingerprint), or the server's own binary,
//! which dispatches the helpers too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a `sycri-engine` binary was not used.
#[derive(thiserror::Error, Debug)]
pub enum EngineError {
    #[error("engine binary {path}: cannot run it: {source}")]
    Run {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "engine binary {path} is from another build (its sources {found:?}, this server's {want}); \
         rebuild and install both"
    )]
    Mismatch {
        path: PathBuf,
        found: String,
        want: &'static str,
    },
}

/// Asks `path` for its build fingerprint and checks it against ours.
fn check(path: &Path) -> Result<(), EngineError> {
    let out = Command::new(path)
        .arg(sycri_native::ENGINE_BUILD_ARG)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .env_clear()
        .output()
        .map_err(|source| EngineError::Run {
            path: path.to_path_buf(),
            source,
        })?;
    let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && found == sycri_native::ENGINE_BUILD {
        Ok(())
    } else {
        Err(EngineError::Mismatch {
            path: path.to_path_buf(),
            found,
            want: sycri_native::ENGINE_BUILD,
        })
    }
}

/// Chooses the binary that runs the helpers. Run it before the reaper starts
/// (it waits for its probe itself).
///
/// `configured` (the `engine_binary` setting) must be a matching engine. Else
/// `sycri-engine` beside the server's binary is used when it matches (a small,
/// ideally static binary: each monitor lives as long as its container); a
/// stale one is reported and passed over; else the server runs the helpers
/// from its own binary.
pub fn select(configured: Option<&Path>) -> Result<PathBuf, EngineError> {
    let chosen = match configured {
        Some(path) => {
            check(path)?;
            path.to_path_buf()
        }
        None => {
            let beside = std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|d| d.join("sycri-engine")))
                .filter(|p| p.is_file());
            match beside {
                Some(path) => match check(&path) {
                    Ok(()) => path,
                    Err(e) => {
                        tracing::warn!("{e}; running the helpers from sycri itself");
                        own()
                    }
                },
                None => own(),
            }
        }
    };
    tracing::info!(engine = %chosen.display(), "helper binary");
    Ok(chosen)
}

/// The server's own binary, which dispatches the helpers as well (by
/// /proc/self/exe, which still runs when the file was replaced on disk).
pub fn own() -> PathBuf {
    PathBuf::from("/proc/self/exe")
}
