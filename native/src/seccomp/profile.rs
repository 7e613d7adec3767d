//! The OCI seccomp profile as JSON (runtime-spec `linux.seccomp`, the form
//! Localhost profiles are written in): plain data, read by the compiler in
//! mod.rs and built by the RuntimeDefault profile in default.rs.

use serde::{Deserialize, Serialize};

/// An OCI seccomp profile (runtime-spec `linux.seccomp`), as Localhost
/// profiles are written.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub default_action: String,
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub syscalls: Vec<SyscallRule>,
    /// Docker's profile format lists architectures here; accepted, not needed.
    #[serde(default, rename = "archMap")]
    pub arch_map: Option<serde_json::Value>,
    #[serde(default, rename = "listenerPath")]
    pub listener_path: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    #[serde(default)]
    pub names: Vec<String>,
    /// Docker's older single-name form.
    #[serde(default)]
    pub name: Option<String>,
    pub action: String,
    #[serde(default)]
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Vec<ArgCondition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ArgCondition {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}
