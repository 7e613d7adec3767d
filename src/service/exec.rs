//! ExecSync: a command inside a running container, its output collected
//! with bounds and a timeout; and the request a streaming exec starts from.
//! The work inside the container is the engine's `__exec` helper.

use super::Runtime;
use crate::engine::{ExecOutput, ExecRequest};
use crate::error::{Error, Result};
use std::time::Duration;

impl Runtime {
    /// What the engine needs to run `cmd` in the running container `id`.
    pub(super) fn exec_request(
        &self,
        id: &str,
        cmd: Vec<String>,
        tty: bool,
    ) -> Result<ExecRequest> {
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("exec needs a command".into()));
        }
        let c = self.running_container(id)?;
        let pid = c
            .meta
            .init
            .map(|p| p.pid)
            .ok_or_else(|| Error::Internal("running container without pid".into()))?;
        Ok(ExecRequest {
            container_spec: c.spec_file(),
            pid,
            args: cmd,
            tty,
            work_dir: self.container_run_dir(&c.meta.id),
        })
    }

    pub async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout: i64) -> Result<ExecOutput> {
        let req = self.exec_request(id, cmd, false)?;
        let limit = (timeout > 0).then(|| Duration::from_secs(timeout.unsigned_abs()));
        self.engine.exec_sync(&req, limit).await
    }
}
